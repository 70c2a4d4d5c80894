"""WSGI entry point for the web process."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demoapp.settings")
application = get_wsgi_application()
