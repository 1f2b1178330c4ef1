"""``manage.py`` commands of ``taskflow.integrations.django``."""
