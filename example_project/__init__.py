"""An example of a vendor's app using celery-tenant-gate, and the demo that runs it.

``example_project.vendorapp`` is the app (Celery tasks, the webhook's web app, its
settings); ``example_project.demo`` runs the whole story on this machine:
``python -m example_project.demo``. See ``example_project/README.md``.
"""
