"""The demo's jobs: short tasks that record exactly when and where they ran."""
