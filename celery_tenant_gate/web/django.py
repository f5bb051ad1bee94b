"""The webhook as a Django view (CSRF-exempt: SuperOffice signs its token instead)::

# urls.py
from proj.celery import app
from celery_tenant_gate.web.django import webhook_view

urlpatterns = [path("superoffice/webhook", webhook_view(app))]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]
    from django.views.decorators.csrf import csrf_exempt  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the environment
    from . import missing_extra

    raise missing_extra("Django", "django") from exc

from . import as_receiver, parse_content_length, read_limited, read_wsgi_body


def webhook_view(receiver_or_app: Any) -> Callable[[HttpRequest], HttpResponse]:
    """A Django view answering SuperOffice's notifications (a receiver or a Celery app)."""
    receiver = as_receiver(receiver_or_app)

    def view(request: HttpRequest) -> HttpResponse:
        method = request.method or "GET"
        try:
            length = parse_content_length(request.META.get("CONTENT_LENGTH"))
        except ValueError:
            length = None  # Django reads no body then; the receiver says it is empty
        body = None
        if method.upper() == "POST" and (length is None or length <= receiver.max_body):
            if "wsgi.input" in request.META:
                # Django reads no chunked body (no Content-Length): the server's stream,
                # which Django has not touched (the view is CSRF-exempt).
                body = read_wsgi_body(request.META, length, receiver.max_body)
            else:  # ASGI: Django has read the body already
                body = read_limited(request.read, receiver.max_body + 1)
        answer = receiver.handle(method, request.META.get("CONTENT_TYPE"), body, length)
        response = HttpResponse(answer.body, status=answer.status)
        for name, value in answer.headers.items():
            response[name] = value
        return response

    exempt: Callable[[HttpRequest], HttpResponse] = csrf_exempt(view)
    return exempt
