"""Enqueue a job from a web request, as a real web process would."""

from django.http import HttpRequest, JsonResponse

from jobs.tasks import send_email


def enqueue(request: HttpRequest) -> JsonResponse:
    result = send_email.delay(duration=float(request.GET.get("duration", "0.1")))
    return JsonResponse({"task_id": result.id})
