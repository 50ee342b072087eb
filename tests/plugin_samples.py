"""Actions for the plugin tests, referenced as tests.plugin_samples:NAME."""

from twisted.internet import defer


def record(context, value="seen"):
    """A function action: returns what it was given, with the device name."""
    return {"device": context.device.name, "value": value}


def explode(context):
    """An action that raises."""
    raise RuntimeError("plugin went bang")


def hang(context):
    """An action that never finishes."""
    return defer.Deferred()


def garbage(context):
    """An action that returns something no step may return."""
    return object()


class Greeting:
    """A class action: built once with its parameters."""

    def __init__(self, text="hello"):
        self.text = text

    def __call__(self, context):
        return f"{self.text} {context.device.name}"
