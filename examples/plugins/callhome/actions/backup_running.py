"""
Example action plugin: back up a device's running config, only when it changed.

Put the directory holding ``callhome/actions/`` (here ``examples/plugins``)
in the config's ``plugin_paths`` and use it in a chain::

    plugin_paths: [examples/plugins]
    chains:
      backup:
        - backup-running: {directory: var/backups}

Each device's configuration is written to ``<directory>/<device>.xml`` as
canonical, pretty-printed XML (stable across calls, so the directory can be
a git repository and every commit a real change).  The file is rewritten
only when the content differs; the step returns the path, or ``unchanged``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lxml import etree

from callhome.actions import ActionConfigError, ActionContext
from callhome.actions.plugins import ActionPlugin
from callhome.netconf import operations


def canonical(data: etree._Element | None) -> bytes:
    """The children of <data>, canonicalised and indented, one stable text."""
    if data is None:
        return b""
    parts = []
    for child in data:
        # C14N fixes attribute order and namespace declarations; reparsing
        # without blank text then indenting fixes whitespace.
        c14n = etree.tostring(child, method="c14n")
        tree = etree.fromstring(c14n, etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True))
        parts.append(etree.tostring(tree, pretty_print=True))
    return b"".join(parts)


class BackupRunning:
    """Fetch the running config; write it if it changed since the last backup."""

    name = "backup-running"

    def __init__(self, directory: str = "var/backups", source: str = "running") -> None:
        if not isinstance(directory, str) or not directory:
            raise ActionConfigError("must be a directory path", key="directory")
        if source not in ("running", "startup", "candidate"):
            raise ActionConfigError("must be running, startup or candidate", key="source")
        self.directory = Path(directory)
        self.source = source

    async def __call__(self, context: ActionContext) -> str:
        """Back up one device; return the path written, or 'unchanged'."""
        reply = await context.session.rpc(operations.simple("get-config", source=self.source))
        content = canonical(reply.data)
        target = self.directory / f"{context.device.name}.xml"
        try:
            if target.read_bytes() == content:
                return "unchanged"
        except FileNotFoundError:
            pass
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".partial-", dir=self.directory)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
        context.log.info("backed up {device} to {path}", device=context.device.name, path=str(target))
        return str(target)


# What the plugin system finds: IPlugin + IActionFactory, named for chains.
backup_running = ActionPlugin("backup-running", BackupRunning)
