"""
The built-in actions: thin, documented functions over the NETCONF session.

Each is a class built once from the step's parameters (checked when the
config loads) and called once per session.  Actions that fetch data save the
reply as received through the results writer (``save: false`` turns that
off, for a later ``save`` step) and return a :class:`Saved`.  An action that
needs a capability checks the device's hello first and fails with a clear
message when it is missing.

See ``README.md`` (Chains) for the parameters of each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lxml import etree
from twisted.internet import defer, task

from callhome.actions import ActionConfigError, ActionContext
from callhome.netconf import operations as ops
from callhome.netconf import xml
from callhome.netconf.session import RPCReply
from callhome.actions.capabilities import MissingCapability, require  # noqa: F401  (MissingCapability: re-exported)
from callhome.actions import replay
from callhome.actions.oran import OranSupervision
from callhome.actions.schemas import GetSchema

DATASTORES = ("running", "candidate", "startup")
# Device-given module names become file names: YANG's own grammar only.
WITH_DEFAULTS = ("report-all", "report-all-tagged", "trim", "explicit")


@dataclass(frozen=True)
class Saved:
    """What a data-fetching step produced: the reply, and where it was saved."""

    reply: RPCReply
    path: Path | None


# --- parameter checks -----------------------------------------------------------


def _choice(value: Any, allowed: tuple[str, ...], key: str) -> str:
    if value not in allowed:
        raise ActionConfigError(f"must be one of {', '.join(allowed)}", key=key)
    return value


def _optional_choice(value: Any, allowed: tuple[str, ...], key: str) -> str | None:
    return None if value is None else _choice(value, allowed, key)


def _xml_text(inline: Any, file: Any, key: str, required: bool = True) -> str | None:
    """XML given inline (C{key}) or in a file (C{key}_file): read it now."""
    if inline is not None and file is not None:
        raise ActionConfigError(f"give {key} or {key}_file, not both")
    if file is not None:
        if not isinstance(file, str):
            raise ActionConfigError("must be a file path", key=f"{key}_file")
        try:
            return Path(file).read_text(encoding="utf-8")
        except OSError as e:
            raise ActionConfigError(f"cannot read {file}: {e.strerror}", key=f"{key}_file") from None
    if inline is None:
        if required:
            raise ActionConfigError(f"give {key} (XML) or {key}_file")
        return None
    if not isinstance(inline, str):
        raise ActionConfigError("must be XML text", key=key)
    return inline


def _parse_fragment(text: str, key: str) -> list[etree._Element]:
    try:
        elements = ops.fragment(text)
    except etree.XMLSyntaxError as e:
        raise ActionConfigError(f"not well-formed XML: {e}", key=key) from None
    if not elements:
        raise ActionConfigError("holds no XML element", key=key)
    return elements


def _source_or_config(source: Any, config: Any, config_file: Any) -> list[etree._Element] | None:
    """A datastore name or an inline/file config (parsed), not both."""
    text = _xml_text(config, config_file, "config", required=False)
    if text is not None and source is not None:
        raise ActionConfigError("give source or config, not both")
    if source is not None:
        _choice(source, DATASTORES, "source")
    return _parse_fragment(text, "config") if text is not None else None


def _filter(subtree: Any, xpath: Any, namespaces: Any) -> etree._Element | None:
    if subtree is not None and not isinstance(subtree, str):
        raise ActionConfigError("must be XML text", key="subtree")
    if xpath is not None and not isinstance(xpath, str):
        raise ActionConfigError("must be an XPath expression (text)", key="xpath")
    if subtree is not None and xpath is not None:
        raise ActionConfigError("give subtree or xpath, not both")
    if namespaces is not None:
        if xpath is None:
            raise ActionConfigError("only goes with xpath", key="namespaces")
        if not isinstance(namespaces, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in namespaces.items()):
            raise ActionConfigError("must map prefixes to namespace URIs", key="namespaces")
    try:
        return ops.filter_element(subtree, xpath, namespaces)
    except etree.XMLSyntaxError as e:
        raise ActionConfigError(f"not well-formed XML: {e}", key="subtree") from None


# --- the actions ------------------------------------------------------------------


class _RPCAction:
    """An action that sends one built operation."""

    name = ""
    needs: tuple[str, ...] = ()
    save_reply = False

    def __init__(self, operation: etree._Element, save: bool = False) -> None:
        self.operation = operation
        self.save_reply = save

    def __call__(self, context: ActionContext) -> defer.Deferred[Any]:
        """Check capabilities, send, and save or return the reply."""
        for capability in self.needs:
            require(context, capability, self.name)
        d = context.session.rpc(self.operation)
        d.addCallback(self.done, context)
        return d

    def done(self, reply: RPCReply, context: ActionContext) -> Any:
        path = context.results.save(context.device.name, self.name, reply.raw) if self.save_reply else None
        return Saved(reply, path) if self.save_reply or reply.data is not None else "ok"


class Get(_RPCAction):
    """``get: {subtree | xpath, namespaces, with_defaults, save}``: state and configuration."""

    name = "get"

    def __init__(self, subtree: str | None = None, xpath: str | None = None, namespaces: Mapping[str, str] | None = None, with_defaults: str | None = None, save: bool = True) -> None:
        op = etree.Element(xml.qname("get"), nsmap={None: xml.NETCONF_NS})
        flt = _filter(subtree, xpath, namespaces)
        if flt is not None:
            op.append(flt)
        ops.with_defaults(op, _optional_choice(with_defaults, WITH_DEFAULTS, "with_defaults"))
        self.needs = (("xpath",) if xpath else ()) + (("with-defaults",) if with_defaults else ())
        super().__init__(op, save=bool(save))


class GetConfig(_RPCAction):
    """``get-config: {source, subtree | xpath, namespaces, with_defaults, save}``."""

    name = "get-config"

    def __init__(self, source: str = "running", subtree: str | None = None, xpath: str | None = None, namespaces: Mapping[str, str] | None = None, with_defaults: str | None = None, save: bool = True) -> None:
        _choice(source, DATASTORES, "source")
        op = ops.simple("get-config", source=source)
        flt = _filter(subtree, xpath, namespaces)
        if flt is not None:
            op.append(flt)
        ops.with_defaults(op, _optional_choice(with_defaults, WITH_DEFAULTS, "with_defaults"))
        self.needs = _datastore_needs(source) + (("xpath",) if xpath else ()) + (("with-defaults",) if with_defaults else ())
        super().__init__(op, save=bool(save))


def _datastore_needs(datastore: str) -> tuple[str, ...]:
    return {"candidate": ("candidate",), "startup": ("startup",)}.get(datastore, ())


class EditConfig(_RPCAction):
    """
    ``edit-config: {target, config | config_file, default_operation,
    test_option, error_option}``.
    """

    name = "edit-config"

    def __init__(self, target: str = "candidate", config: str | None = None, config_file: str | None = None, default_operation: str | None = None, test_option: str | None = None, error_option: str | None = None) -> None:
        _choice(target, ("running", "candidate"), "target")
        text = _xml_text(config, config_file, "config")
        assert text is not None
        elements = _parse_fragment(text, "config" if config is not None else "config_file")
        op = ops.edit_config(
            target, elements,
            _optional_choice(default_operation, ("merge", "replace", "none"), "default_operation"),
            _optional_choice(test_option, ("test-then-set", "set", "test-only"), "test_option"),
            _optional_choice(error_option, ("stop-on-error", "continue-on-error", "rollback-on-error"), "error_option"),
        )
        self.needs = ("candidate",) if target == "candidate" else ("writable-running",)
        if test_option is not None:
            self.needs += ("validate",)
        super().__init__(op)


class _DatastoreOp(_RPCAction):
    """An operation on one datastore: lock, unlock, delete-config."""

    role = "target"
    allowed: tuple[str, ...] = DATASTORES

    def __init__(self, target: str = "candidate") -> None:
        _choice(target, self.allowed, "target")
        self.needs = _datastore_needs(target)
        super().__init__(ops.simple(self.name, **{self.role: target}))


class Lock(_DatastoreOp):
    """``lock: {target}``: lock a datastore for this session (RFC 6241 §7.5)."""

    name = "lock"


class Unlock(_DatastoreOp):
    """``unlock: {target}``."""

    name = "unlock"


class DeleteConfig(_DatastoreOp):
    """``delete-config: {target}``: startup only (running cannot be deleted)."""

    name = "delete-config"
    allowed = ("startup", "candidate")

    def __init__(self, target: str = "startup") -> None:
        super().__init__(target)


class Commit(_RPCAction):
    """``commit: {confirmed, confirm_timeout, persist, persist_id}``: candidate to running."""

    name = "commit"

    def __init__(self, confirmed: bool = False, confirm_timeout: int | None = None, persist: str | None = None, persist_id: str | None = None) -> None:
        if confirm_timeout is not None and (isinstance(confirm_timeout, bool) or not isinstance(confirm_timeout, int) or confirm_timeout < 1):
            raise ActionConfigError("must be a whole number of seconds", key="confirm_timeout")
        self.needs = ("candidate",) + (("confirmed-commit",) if confirmed or persist_id else ())
        super().__init__(ops.commit(bool(confirmed), confirm_timeout, persist, persist_id))


class DiscardChanges(_RPCAction):
    """``discard-changes: {}``: reset the candidate to running."""

    name = "discard-changes"
    needs = ("candidate",)

    def __init__(self) -> None:
        super().__init__(ops.simple("discard-changes"))


class Validate(_RPCAction):
    """``validate: {source | config | config_file}``."""

    name = "validate"

    def __init__(self, source: str | None = None, config: str | None = None, config_file: str | None = None) -> None:
        elements = _source_or_config(source, config, config_file)
        self.needs = ("validate",) + _datastore_needs(source or ("candidate" if elements is None else "running"))
        super().__init__(ops.validate(source or "candidate", elements))


class CopyConfig(_RPCAction):
    """``copy-config: {source | config | config_file, target}``."""

    name = "copy-config"

    def __init__(self, target: str = "startup", source: str | None = None, config: str | None = None, config_file: str | None = None) -> None:
        _choice(target, DATASTORES, "target")
        elements = _source_or_config(source, config, config_file)
        self.needs = _datastore_needs(target) + _datastore_needs(source or "running")
        super().__init__(ops.copy_config(target, source or "running", elements))


class RPC(_RPCAction):
    """``rpc: {xml | file, save}``: any operation, given as XML."""

    name = "rpc"

    def __init__(self, xml: str | None = None, file: str | None = None, save: bool = True) -> None:
        if xml is not None and file is not None:
            raise ActionConfigError("give xml or file, not both")
        text = _xml_text(xml, file, "xml") if file is None else _xml_text(None, file, "xml")
        assert text is not None
        try:
            operation = ops.element(text)
        except (etree.XMLSyntaxError, ValueError) as e:
            raise ActionConfigError(f"must be one well-formed XML element: {e}", key="xml" if file is None else "file") from None
        if etree.QName(operation).localname == "rpc":
            raise ActionConfigError("give the operation inside <rpc>, not the <rpc> itself", key="xml")
        super().__init__(operation, save=bool(save))


class Subscribe(_RPCAction):
    """
    ``subscribe: {stream, subtree | xpath, namespaces, start_time, stop_time, resume}``:
    RFC 5277 create-subscription.  Notifications are then saved as
    ``<stamp>-notification.xml`` and run the device's ``on_notification``
    chain; in persistent mode they keep flowing after the chain.  With
    C{resume} (the default) a device that was subscribed before replays what
    it raised since the last notification saved (L{callhome.actions.replay}).
    """

    name = "subscribe"
    needs = ("notification",)

    def __init__(self, stream: str | None = None, subtree: str | None = None, xpath: str | None = None, namespaces: Mapping[str, str] | None = None,
                 start_time: str | None = None, stop_time: str | None = None, resume: bool = True) -> None:
        for key, value in (("stream", stream), ("start_time", start_time), ("stop_time", stop_time)):
            if value is not None and not isinstance(value, str):
                raise ActionConfigError("must be text (times as RFC 3339, e.g. 2026-01-01T00:00:00Z)", key=key)
        if stop_time is not None and start_time is None:
            raise ActionConfigError("stop_time needs start_time (a replay)", key="stop_time")
        if not isinstance(resume, bool):
            raise ActionConfigError("must be true or false", key="resume")
        self.stream, self.flt = stream, _filter(subtree, xpath, namespaces)
        self.resume = resume and start_time is None
        super().__init__(ops.create_subscription(stream, self.flt, start_time, stop_time))

    async def __call__(self, context: ActionContext) -> Any:  # type: ignore[override]  # a coroutine, which the runner takes as a step's result
        """Hook notifications up before subscribing, so none is missed; resume where the last session stopped."""
        for capability in self.needs:
            require(context, capability, self.name)
        session, deliver = context.session, context.notifications
        last = await context.notification_history() if self.resume and context.notification_history is not None else None
        if last is not None:
            since, seen = last
            session.on_notification = replay.ReplayFilter(context, since, seen, deliver) if deliver is not None else None
            try:
                reply = await session.rpc(ops.create_subscription(self.stream, self.flt, start_time=since))
                return self.done(reply, context)
            except xml.RPCError as e:
                message = f"cannot replay notifications since {since} ({e}): what the device raised from then until now is lost"
                context.log.warn("{device}: {message}", device=context.device.name, message=message)
                if context.alarm is not None:
                    context.alarm("notification-gap", message, gap_from=since, gap_to=format_now(context))
        session.on_notification = deliver
        reply = await session.rpc(self.operation)
        return self.done(reply, context)


def format_now(context: ActionContext) -> str:
    """The context's clock as RFC 3339 UTC."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(context.clock.seconds(), timezone.utc).isoformat().replace("+00:00", "Z")


class Save:
    """
    ``save: {path, content}``: write the latest fetched reply somewhere of
    your choosing.  C{path} may use ``{device}``, ``{action}`` and
    ``{timestamp}``; C{content} is ``reply`` (as received) or ``data`` (the
    children of ``<data>``, re-serialised, for diff-friendly files).
    """

    name = "save"

    def __init__(self, path: str = "{device}/{timestamp}-{action}.xml", content: str = "reply") -> None:
        if not isinstance(path, str) or ".." in Path(path).parts:
            raise ActionConfigError("must be a relative path template without '..'", key="path")
        self.path = path
        self.content = _choice(content, ("reply", "data"), "content")

    def __call__(self, context: ActionContext) -> Path:
        """Write the latest Saved reply of this chain."""
        for outcome in reversed(context.outcomes):
            if outcome.ok and isinstance(outcome.result, Saved):
                saved = outcome.result
                break
        else:
            raise LookupError("no earlier step fetched a reply to save")
        if self.content == "data":
            data = saved.reply.data
            payload = b"".join(etree.tostring(child, pretty_print=True) for child in (data if data is not None else []))
        else:
            payload = saved.reply.raw
        relative = self.path.format(device=context.device.name, action=outcome.action, timestamp=context.results.stamp())
        return context.results.save_file(context.device.name, relative, payload, under_device=False)


class Log:
    """``log: {message}``: one log line; ``{device}`` is replaced."""

    name = "log"

    def __init__(self, message: str = "") -> None:
        if not isinstance(message, str):
            raise ActionConfigError("must be text", key="message")
        self.message = message

    def __call__(self, context: ActionContext) -> None:
        """Log it with the device's name."""
        context.log.info("{device}: {message}", device=context.device.name, message=self.message.replace("{device}", context.device.name))


class Sleep:
    """
    ``sleep: {seconds}``: wait before the next step.

    Also the workaround for devices that lose an ``<rpc>`` read together
    with the client hello (yuma123's netconfd does): a short sleep as the
    first step.
    """

    name = "sleep"

    def __init__(self, seconds: float = 1.0) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ActionConfigError("must be a number of seconds, 0 or more", key="seconds")
        self.seconds = float(seconds)

    def __call__(self, context: ActionContext) -> defer.Deferred[None]:
        """Wait, on the injected clock."""
        return task.deferLater(context.clock, self.seconds, lambda: None)


class Close:
    """``close: {}``: end the session now (the rest of the chain is skipped)."""

    name = "close"

    def __call__(self, context: ActionContext) -> defer.Deferred[str]:
        """close-session, then disconnect."""
        context.stop = True
        return context.session.close()


ACTIONS: dict[str, Any] = {
    "get": Get,
    "get-config": GetConfig,
    "edit-config": EditConfig,
    "lock": Lock,
    "unlock": Unlock,
    "commit": Commit,
    "discard-changes": DiscardChanges,
    "validate": Validate,
    "copy-config": CopyConfig,
    "delete-config": DeleteConfig,
    "get-schema": GetSchema,  # callhome/actions/schemas.py
    "oran-supervision": OranSupervision,  # callhome/actions/oran.py
    "subscribe": Subscribe,
    "rpc": RPC,
    "save": Save,
    "log": Log,
    "sleep": Sleep,
    "close": Close,
}
