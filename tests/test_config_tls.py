"""
The TLS keys of the config (issue 12's contract): listen_tls,
tls_certificate and tls_private_key with their passphrase forms,
devices[].certificates and tls_names, tls_trusted_ca, tls.probe_*.
Every error names its key path.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from callhome import config
from tests.tls_certs import issue


class TlsConfigTests(SynchronousTestCase):
    """Loading TLS configs and refusing bad ones with the key path."""

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp()).resolve()
        self.tmp.mkdir(parents=True)
        self.manager = issue("manager")
        self.cert, self.key = self.manager.write(self.tmp, "manager")
        self.device = issue("ru-1")

    def text(self, device: str = "", defaults: str = "", top: str = "") -> str:
        defaults = defaults or f"tls_certificate: {self.cert}, tls_private_key: {self.key}, chain: main"
        device = device or f'name: ru-1, certificates: ["{self.device.fingerprint}"]'
        return f"""
listen_tls: ["tcp:4335"]
results_dir: {self.tmp}/results
defaults: {{{defaults}}}
devices:
  - {{{device}}}
chains: {{main: [{{get: {{}}}}]}}
{top}
"""

    def error(self, text: str, environ: dict[str, str] | None = None) -> str:
        with self.assertRaises(config.ConfigError) as caught:
            config.loads(text, environ=environ or {})
        return str(caught.exception)

    def test_a_tls_only_config_loads_without_ssh_credentials(self) -> None:
        loaded = config.loads(self.text(top="tls: {probe_interval: 20, probe_max_missed: 4}"))
        self.assertEqual(loaded.listen, ())
        self.assertEqual(loaded.listen_tls, ("tcp:4335",))
        (device,) = loaded.devices
        self.assertEqual(device.certificates, frozenset([self.device.fingerprint]))
        self.assertEqual(device.host_keys, frozenset())
        self.assertIsNotNone(device.tls)
        assert device.tls is not None
        self.assertEqual(device.tls.fingerprint, self.manager.fingerprint)
        self.assertEqual((loaded.tls.probe_interval, loaded.tls.probe_max_missed), (20.0, 4))
        self.assertIs(loaded.tls.default_identity, device.tls)

    def test_probe_defaults_follow_the_ssh_keepalive(self) -> None:
        loaded = config.loads(self.text(top="ssh: {keepalive_interval: 12, keepalive_max_missed: 5}"))
        self.assertEqual((loaded.tls.probe_interval, loaded.tls.probe_max_missed), (12.0, 5))

    def test_a_bad_certificate_fingerprint_names_its_key_path(self) -> None:
        message = self.error(self.text(device='name: ru-1, certificates: ["AB:CD"]'))
        self.assertIn("devices[0].certificates[0]: 'AB:CD' is not a certificate SHA-256 fingerprint", message)

    def test_one_certificate_two_devices_is_refused(self) -> None:
        fp = self.device.fingerprint
        text = self.text(device=f'name: ru-1, certificates: ["{fp}"]}}\n  - {{name: ru-2, certificates: ["{fp.lower()}"]')
        self.assertIn("devices[1].certificates[0]: certificate", self.error(text))

    def test_tls_names_need_a_trusted_ca(self) -> None:
        message = self.error(self.text(device='name: ru-1, tls_names: ["ru-1.example.net"]'))
        self.assertIn("devices[0].tls_names: needs tls_trusted_ca", message)

    def test_tls_names_with_a_trusted_ca(self) -> None:
        ca = self.tmp / "ca.pem"
        ca.write_bytes(issue("CA", ca=True).pem)
        loaded = config.loads(self.text(device='name: ru-1, tls_names: ["RU-1.example.net."]', top=f"tls_trusted_ca: {ca}"))
        self.assertEqual(loaded.devices[0].tls_names, ("RU-1.example.net.",))
        self.assertIn("tls-name:ru-1.example.net", loaded.devices[0].identities)
        self.assertIn("tls_trusted_ca: ", self.error(self.text(top=f"tls_trusted_ca: {self.tmp}/nope.pem")))

    def test_a_tls_device_without_an_identity_names_the_device(self) -> None:
        message = self.error(self.text(defaults="chain: main"))
        self.assertIn("devices[0]: no TLS identity: set tls_certificate and tls_private_key", message)

    def test_the_key_must_belong_to_the_certificate(self) -> None:
        _, other_key = issue("other").write(self.tmp, "other")
        message = self.error(self.text(defaults=f"tls_certificate: {self.cert}, tls_private_key: {other_key}, chain: main"))
        self.assertIn("defaults.tls_private_key:", message)
        self.assertIn("is not the private key of the certificate", message)

    def test_an_encrypted_key_needs_its_passphrase_by_env(self) -> None:
        encrypted = self.tmp / "encrypted.key"
        encrypted.write_bytes(self.manager.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret")))
        encrypted.chmod(0o600)
        base = f"tls_certificate: {self.cert}, tls_private_key: {encrypted}, chain: main"
        self.assertIn("is encrypted: set tls_private_key_passphrase", self.error(self.text(defaults=base)))
        loaded = config.loads(self.text(defaults=base + ", tls_private_key_passphrase_env: TLS_PASS"), environ={"TLS_PASS": "s3cret"})
        self.assertIsNotNone(loaded.devices[0].tls)
        wrong = self.error(self.text(defaults=base + ", tls_private_key_passphrase_env: TLS_PASS"), environ={"TLS_PASS": "nope"})
        self.assertIn("or the passphrase is wrong", wrong)
        self.assertNotIn("nope", wrong)

    def test_half_an_identity_is_refused(self) -> None:
        message = self.error(self.text(defaults=f"tls_certificate: {self.cert}, chain: main"))
        self.assertIn("defaults.tls_certificate: set tls_private_key too", message)

    def test_one_endpoint_in_both_lists_is_refused(self) -> None:
        text = self.text().replace('listen_tls: ["tcp:4335"]', 'listen_tls: ["tcp:4335"]\nlisten: ["tcp:4335"]')
        self.assertIn("listen_tls: tcp:4335 is in listen too", self.error(text))

    def test_a_device_needs_some_identity(self) -> None:
        self.assertIn("devices[0]: missing host_keys", self.error(self.text(device="name: ru-1")))
