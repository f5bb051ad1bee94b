"""The model: tenant states, records, verdicts, notifications, tenant ids, held
messages and the errors. Pure: no I/O, no Celery import."""
