"""Placeholder replaced below."""
def register(app):
    pass
