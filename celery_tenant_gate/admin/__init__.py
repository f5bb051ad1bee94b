"""Administration: the service behind ``celery tenant-gate`` and its command line."""
