"""`make demo`: the real scaler scaling real Celery workers on local Redis and an AWS emulator."""
