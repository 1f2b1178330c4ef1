"""``manage.py taskflow``."""
