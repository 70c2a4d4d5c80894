"""``python -m celery_autoscaler.sim``: the same as ``celery-autoscaler simulate``."""

from celery_autoscaler.sim.command import main

raise SystemExit(main())
