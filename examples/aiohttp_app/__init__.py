"""An aiohttp app that has a taskflow worker compute reports (see README.md)."""
