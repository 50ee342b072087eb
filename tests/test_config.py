"""
The config file: the operators' contract.  Every error names its key path.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from callhome import config
from callhome.actions.chains import build_chains
from callhome import fingerprints
from tests.helpers import new_key, write_key

REPO = Path(__file__).resolve().parent.parent


class ConfigTests(SynchronousTestCase):
    """Loading good configs and refusing bad ones with a precise message."""

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        self.key = new_key()
        self.key_path = write_key(self.tmp, "manager", self.key)
        self.device_fp = fingerprints.of_key(new_key())

    def text(self, device_extra: str = "", defaults: str | None = None, top: str = "") -> str:
        defaults = defaults if defaults is not None else f"{{username: admin, private_key: {self.key_path}}}"
        return f"""
listen: [tcp:4334]
results_dir: {self.tmp}/results
defaults: {defaults}
devices:
  - name: edge-1
    host_keys: ["{self.device_fp}"]
    chain: inventory
{device_extra}
chains:
  inventory:
    - get: {{}}
    - get-config: {{source: running}}
{top}
"""

    def error(self, text: str, environ=None) -> config.ConfigError:
        # Loading a config means reading it and building its chains' actions.
        with self.assertRaises(config.ConfigError) as caught:
            build_chains(config.loads(text, environ=environ or {}))
        return caught.exception

    def test_shipped_config_loads(self):
        """etc/config.yaml, as shipped, is valid (the quick start depends on it)."""
        import os

        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            loaded = config.load("etc/config.yaml")
        finally:
            os.chdir(cwd)
        self.assertEqual(loaded.listen, ("tcp:4334",))
        self.assertEqual([d.name for d in loaded.devices], ["demo-device"])
        self.assertEqual(loaded.devices[0].credentials.methods, ("publickey",))

    def test_good_config(self):
        """Defaults are inherited; chains are built; fingerprints normalised."""
        loaded = config.loads(self.text())
        (device,) = loaded.devices
        self.assertEqual(device.credentials.username, "admin")
        self.assertEqual(device.host_keys, frozenset([self.device_fp]))
        self.assertEqual([s.name for s in loaded.chains["inventory"]], ["get", "get-config"])
        self.assertEqual(loaded.netconf.offer_base_1_1, True)

    def test_fingerprint_forms_are_equivalent(self):
        """Padded, unpadded, with or without SHA256: all match (conch vs ssh-keygen)."""
        bare = self.device_fp[len("SHA256:"):]
        for form in (bare, bare + "=", "SHA256:" + bare + "="):
            self.assertEqual(fingerprints.normalise(form), self.device_fp)

    def test_md5_fingerprint_refused(self):
        """MD5 fingerprints are refused with advice, not silently mismatched."""
        text = self.text().replace(self.device_fp, "MD5:" + ":".join(["ab"] * 16))
        self.assertIn("MD5 fingerprints are not accepted", str(self.error(text)))
        self.assertEqual(self.error(text).path, "devices[0].host_keys[0]")

    def test_unknown_key_suggests(self):
        """A typo names the key path and suggests the right key."""
        e = self.error(self.text("    pasword: x"))
        self.assertEqual(str(e), "devices[0].pasword: unknown key (did you mean 'password'?)")

    def test_wrong_type(self):
        """A wrong type says what was expected and what was found."""
        e = self.error(self.text(top="netconf: {rpc_timeout: soon}"))
        self.assertEqual(str(e), "netconf.rpc_timeout: must be a number, got text")

    def test_bad_fingerprint_path(self):
        """A bad host key entry is located by index."""
        text = self.text().replace(f'["{self.device_fp}"]', f'["{self.device_fp}", "SHA256:short"]')
        self.assertEqual(self.error(text).path, "devices[0].host_keys[1]")

    def test_missing_env_and_file(self):
        """Secrets from the environment or a file must exist."""
        e = self.error(self.text("    password_env: EDGE_PW"))
        self.assertEqual(str(e), "devices[0].password_env: environment variable EDGE_PW is not set")
        e = self.error(self.text(f"    password_file: {self.tmp}/nope"))
        self.assertEqual(e.path, "devices[0].password_file")
        self.assertIn("cannot read", e.problem)

    def test_secret_sources(self):
        """Passwords come inline, from the environment or from a file."""
        loaded = config.loads(self.text("    password_env: PW"), environ={"PW": "from-env"})
        self.assertEqual(loaded.devices[0].credentials.password, "from-env")
        (self.tmp / "pw").write_text("from-file\n")
        loaded = config.loads(self.text(f"    password_file: {self.tmp}/pw"))
        self.assertEqual(loaded.devices[0].credentials.password, "from-file")
        self.assertEqual(loaded.devices[0].credentials.methods, ("publickey", "password", "keyboard-interactive"))

    def test_two_sources_refused(self):
        """password and password_env together are ambiguous."""
        e = self.error(self.text("    password: a\n    password_env: B"), environ={"B": "b"})
        self.assertIn("give only one of", str(e))

    def test_encrypted_key(self):
        """A passphrase-protected key loads with its passphrase, and says so without one."""
        path = write_key(self.tmp / "enc", "key", new_key(), passphrase=b"open sesame")
        defaults = f"{{username: admin, private_key: {path}}}"
        e = self.error(self.text(defaults=defaults))
        self.assertIn("is encrypted", str(e))
        self.assertEqual(e.path, "defaults.private_key")
        good = f"{{username: admin, private_key: {path}, private_key_passphrase_env: KP}}"
        loaded = config.loads(self.text(defaults=good), environ={"KP": "open sesame"})
        self.assertEqual(len(loaded.devices[0].credentials.private_keys), 1)
        e = self.error(self.text(defaults=good), environ={"KP": "wrong"})
        self.assertIn("passphrase is wrong", str(e))
        self.assertNotIn("wrong", e.path)

    def test_missing_key_file(self):
        """A missing key file is named."""
        e = self.error(self.text(defaults=f"{{username: admin, private_key: {self.tmp}/none}}"))
        self.assertEqual(str(e), f"defaults.private_key: no such file: {self.tmp}/none")

    def test_secrets_never_in_errors_or_repr(self):
        """No password or key material in messages or reprs (they reach logs)."""
        loaded = config.loads(self.text("    password: hunter2"))
        self.assertNotIn("hunter2", repr(loaded))
        self.assertNotIn("Private Key", repr(loaded))

    def test_chain_errors(self):
        """Unknown chains, actions and parameters are named precisely."""
        e = self.error(self.text().replace("chain: inventory", "chain: nope"))
        self.assertEqual(str(e), "devices[0].chain: no chain named 'nope' (chains: inventory)")
        e = self.error(self.text().replace("- get: {}", "- gett: {}"))
        self.assertEqual(e.path, "chains.inventory[0].gett")
        self.assertIn("unknown action 'gett'", str(e))
        e = self.error(self.text().replace("- get: {}", "- get: {filter: x}"))
        self.assertEqual(e.path, "chains.inventory[0].get.filter")
        e = self.error(self.text().replace("- get: {}", "- get: {subtree: '<a'}"))
        self.assertEqual(e.path, "chains.inventory[0].get.subtree")
        e = self.error(self.text().replace("source: running", "source: runing"))
        self.assertEqual(str(e), "chains.inventory[1].get-config.source: must be one of running, candidate, startup")
        e = self.error(self.text().replace("- get: {}", "- get: {}\n      on_error: maybe"))
        self.assertEqual(e.path, "chains.inventory[0].on_error")

    def test_duplicate_device_and_key(self):
        """Two devices may not share a name or a host key."""
        dup = f'  - name: edge-1\n    host_keys: ["{fingerprints.of_key(new_key())}"]'
        self.assertIn("duplicate device name", str(self.error(self.text(dup))))
        other = f'  - name: edge-2\n    host_keys: ["{self.device_fp}"]'
        e = self.error(self.text(other))
        self.assertEqual(e.path, "devices[1].host_keys[0]")
        self.assertIn("already listed for device 'edge-1'", e.problem)

    def test_device_name_cannot_escape_results_dir(self):
        """The name becomes a folder: no path separators or dot-dot."""
        e = self.error(self.text().replace("name: edge-1", "name: ../etc"))
        self.assertEqual(e.path, "devices[0].name")

    def test_bad_listen(self):
        """A bad endpoint string is named with an example."""
        e = self.error(self.text().replace("tcp:4334", "tpc:4334"))
        self.assertEqual(e.path, "listen[0]")

    def test_not_yaml(self):
        """A YAML syntax error gives the line."""
        e = self.error("listen: [tcp:1\n  bad: :")
        self.assertIn("not valid YAML at line", str(e))

    def test_missing_file(self):
        """A config file that does not exist is reported, not a traceback."""
        with self.assertRaises(config.ConfigError) as caught:
            config.load(self.tmp / "missing.yaml")
        self.assertIn("cannot read config file", str(caught.exception))

    def test_no_credentials(self):
        """A device with no way to log in is a config error."""
        e = self.error(self.text(defaults="{username: admin}"))
        self.assertIn("no credentials", str(e))


class GroupAndPolicyTests(SynchronousTestCase):
    """Groups, inheritance, unknown-device and admission policies, warnings."""

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        self.key_path = write_key(self.tmp, "manager", new_key())
        self.fp1 = fingerprints.of_key(new_key())
        self.fp2 = fingerprints.of_key(new_key())

    def load(self, extra: str = "", device_extra: str = "", environ=None):
        return config.loads(f"""
listen: [tcp:4334]
defaults: {{username: admin, chain: a}}
groups:
  core: {{private_key: {self.key_path}, chain: b, legacy_algorithms: [ssh-rsa]}}
  edge: {{username: edge-admin, password_env: EDGE_PW}}
devices:
  - {{name: r1, host_keys: ["{self.fp1}"], group: core{device_extra}}}
  - {{name: e1, host_keys: ["{self.fp2}"], group: edge}}
chains: {{a: [get: {{}}], b: [get-config: {{}}]}}
{extra}
""", environ=environ if environ is not None else {"EDGE_PW": "pw"})

    def test_device_inherits_group_then_defaults(self):
        """Device over group over defaults, key by key."""
        loaded = self.load()
        r1, e1 = loaded.devices
        self.assertEqual((r1.group, r1.chain, r1.credentials.username), ("core", "b", "admin"))
        self.assertEqual(r1.legacy_algorithms, frozenset({"ssh-rsa"}))
        self.assertEqual((e1.chain, e1.credentials.username, e1.credentials.password), ("a", "edge-admin", "pw"))
        self.assertEqual(loaded.groups["core"].chain, "b")
        self.assertIsNone(loaded.default_profile, "defaults alone have no credentials")

    def test_device_overrides_group(self):
        """A device's own chain wins over its group's."""
        r1 = self.load(device_extra=", chain: a").devices[0]
        self.assertEqual(r1.chain, "a")

    def test_unknown_group(self):
        """A device naming a missing group is refused with the known groups."""
        with self.assertRaises(config.ConfigError) as caught:
            config.loads(f"listen: [tcp:1]\ndevices: [{{name: x, host_keys: ['{self.fp1}'], group: nope}}]\n")
        self.assertEqual(caught.exception.path, "devices[0].group")

    def test_policies_default_and_choices(self):
        """Safe defaults: reject unknown devices, replace duplicates."""
        loaded = self.load()
        self.assertEqual((loaded.unknown_devices, loaded.duplicate_sessions), ("reject", "replace"))
        self.assertEqual(loaded.admission.max_pending, 200)
        loaded = self.load("unknown_devices: quarantine\nduplicate_sessions: reject\nadmission: {max_pending: 5, failed_auth_limit: 3}")
        self.assertEqual((loaded.unknown_devices, loaded.duplicate_sessions), ("quarantine", "reject"))
        self.assertEqual((loaded.admission.max_pending, loaded.admission.failed_auth_limit), (5, 3))
        with self.assertRaises(config.ConfigError) as caught:
            self.load("unknown_devices: allow")
        self.assertEqual(str(caught.exception), "unknown_devices: must be one of reject, quarantine, accept")

    def test_accept_needs_complete_defaults_and_warns(self):
        """accept runs strangers with the defaults: they must be complete, and it is loud."""
        with self.assertRaises(config.ConfigError) as caught:
            self.load("unknown_devices: accept")
        self.assertEqual(caught.exception.path, "unknown_devices")
        loaded = config.loads(f"""
listen: [tcp:1]
unknown_devices: accept
defaults: {{username: admin, private_key: {self.key_path}, chain: a}}
chains: {{a: [get: {{}}]}}
""")
        self.assertTrue(any("unknown_devices: accept" in w for w in loaded.warnings))
        self.assertEqual(loaded.default_profile.chain, "a")

    def test_unknown_legacy_algorithm(self):
        """Only known legacy names can be enabled."""
        with self.assertRaises(config.ConfigError) as caught:
            config.loads("listen: [tcp:1]\ndefaults: {legacy_algorithms: [rot13]}\n")
        self.assertEqual(caught.exception.path, "defaults.legacy_algorithms[0]")

    def test_secret_warnings(self):
        """Inline passwords, readable key and password files, legacy algorithms: warned."""
        self.key_path.chmod(0o644)
        pw = self.tmp / "pw"
        pw.write_text("x")
        pw.chmod(0o640)
        loaded = self.load(device_extra=f", password_file: {pw}")
        text = "\n".join(loaded.warnings)
        self.assertIn("groups.core.private_key", text)
        self.assertIn("readable by other users", text)
        self.assertIn("devices[0].password_file", text)
        self.assertIn("legacy algorithms enabled: ssh-rsa", text)
        loaded = config.loads("listen: [tcp:1]\ndefaults: {username: a, password: hunter2, chain: c}\nchains: {c: [get: {}]}\n")
        self.assertIn("defaults.password: secret written in the config file", loaded.warnings[0])
        self.assertNotIn("hunter2", "\n".join(loaded.warnings))


class OperationsConfigTests(SynchronousTestCase):
    """store, api, shutdown_grace and log keys."""

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())

    def load(self, extra: str, environ=None) -> config.Config:
        return config.loads(f"listen: [tcp:4334]\n{extra}\n", environ=environ or {})

    def error(self, extra: str, environ=None) -> str:
        with self.assertRaises(config.ConfigError) as caught:
            self.load(extra, environ)
        return str(caught.exception)

    def test_defaults(self):
        loaded = self.load("")
        self.assertEqual(loaded.api.listen, "tcp:8080:interface=127.0.0.1")
        self.assertIsNone(loaded.api.token)
        self.assertEqual(str(loaded.store.database), "var/callhome.sqlite")
        self.assertEqual((loaded.shutdown_grace, loaded.log_format, loaded.log_level), (30.0, "text", "info"))

    def test_workers(self):
        self.assertEqual(self.load("").workers, 1)
        self.assertEqual(self.load("workers: 2").workers, 2)
        self.assertEqual(self.error("workers: 0"), "workers: must be at least 1")
        self.assertEqual(self.error("workers: two"), "workers: must be a whole number, got text")
        self.assertIn("workers: must be at most 64", self.error("workers: 65"))

    def test_api_off_the_loopback_needs_a_token(self):
        for listen in ("tcp:8080", "tcp:8080:interface=0.0.0.0", "tcp6:8080:interface=\\\\:\\\\:"):
            self.assertIn("api.listen: ", self.error(f'api: {{listen: "{listen}"}}'))
        loaded = self.load('api: {listen: "tcp:8443", token_env: TOKEN}', {"TOKEN": "t0k"})
        self.assertEqual(loaded.api.token, "t0k")
        self.assertNotIn("t0k", repr(loaded))
        self.assertEqual(self.error("api: {listen: tcp:8443, token_env: NOPE}"), "api.token_env: environment variable NOPE is not set")
        self.assertIsNone(self.load("api: {listen: null}").api.listen)
        self.assertEqual(self.error("api: {listen: tcp:8443, token_env: EMPTY}", {"EMPTY": " "}), "api.token_env: the API token is empty")
        self.assertTrue(self.load("api: {listen: 'tcp6:1:interface=\\:\\:1'}").api.listen)

    def test_bad_values_name_their_key(self):
        self.assertEqual(self.error("store: {retention: {days: 0}}"), "store.retention.days: must be greater than 0")
        self.assertTrue(self.error("store: {retention: {per_device: x}}").startswith("store.retention.per_device:"))
        self.assertEqual(self.error("log: {format: xml}"), "log.format: must be text or json")
        self.assertEqual(self.error("log: {level: loud}"), "log.level: must be debug, info, warn or error")
        self.assertTrue(self.error("store: {databse: x}").startswith("store.databse: unknown key"))
        self.assertTrue(self.error("api: {listen: nonsense:1}").startswith("api.listen: not a Twisted server endpoint"))
