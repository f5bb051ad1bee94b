"""Telling the outside what the gate did: metrics hooks and collector, Celery task
events."""
