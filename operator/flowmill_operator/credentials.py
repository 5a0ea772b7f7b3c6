"""How the operator authenticates: one loader for both Kopf (watching) and our own
client (applying), so they always talk to the same cluster as the same identity.

The kubernetes client library parses kubeconfig files and the in-cluster service account
(including token rotation and exec plugins); we only read the result out of it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_path: str | None
    certificate_path: str | None
    private_key_path: str | None
    verify: bool
    _configuration: Any

    def authorization(self) -> str | None:
        """The Authorization header value, re-read each time: in-cluster tokens rotate and
        the library's refresh hook re-reads the projected token file."""
        config = self._configuration
        value = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix(
            "authorization"
        )
        return str(value) if value else None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_path)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.certificate_path and self.private_key_path:
            context.load_cert_chain(self.certificate_path, self.private_key_path)
        return context


def load_credentials(kubeconfig: str | None = None) -> Credentials:
    """From `kubeconfig` if given, else in-cluster, else $KUBECONFIG or ~/.kube/config."""
    config = type.__call__(k8s_client.Configuration)
    if kubeconfig:
        k8s_config.load_kube_config(
            config_file=kubeconfig, client_configuration=config, persist_config=False
        )
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=config)
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=config, persist_config=False)
    return Credentials(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        verify=bool(config.verify_ssl),
        _configuration=config,
    )


def kopf_connection_info(credentials: Credentials) -> Any:
    """The same identity as a kopf.ConnectionInfo (for the @kopf.on.login handler)."""
    import kopf

    header = credentials.authorization()
    scheme: str | None = None
    token: str | None = None
    if header and " " in header:
        scheme, token = header.split(" ", 1)
    elif header:  # a bare token without a scheme
        token = header
    return kopf.ConnectionInfo(
        server=credentials.server,
        ca_path=credentials.ca_path,
        insecure=not credentials.verify,
        scheme=scheme,
        token=token,
        certificate_path=credentials.certificate_path,
        private_key_path=credentials.private_key_path,
    )
