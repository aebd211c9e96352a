"""The portjournal host controller: link, device driver, primary journal, merge and restore."""

from importlib.metadata import version

__version__ = version("portjournal")
