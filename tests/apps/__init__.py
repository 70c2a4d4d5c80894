"""Celery apps that test worker subprocesses import (``celery -A apps.<module>``)."""
