"""The desk's pages, one router per part of the desk (mounted by ``commands/desk/web.py``)."""
