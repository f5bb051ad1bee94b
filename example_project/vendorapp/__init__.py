"""A vendor's app serving many SuperOffice tenants: it syncs their contacts and mails
them a digest of their sales, in Celery.

- ``vendorapp.celery``: the Celery app (``celery -A example_project.vendorapp worker``);
- ``vendorapp.tasks``: its tasks, tenant-scoped and not;
- ``vendorapp.web``: the web app that receives SuperOffice's state-change webhook;
- ``vendorapp.settings``: the configuration, from environment variables.

This package imports neither the Celery app nor the web app, so that a web process
does not load the worker side.
"""
