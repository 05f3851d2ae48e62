"""The built-in resource kinds (installed as ``pkiform.providers``), one module per kind."""

from __future__ import annotations

from pkiform.provider import Provider


def builtin_providers() -> list[Provider]:
    from pkiform.providers.ca import CaProvider
    from pkiform.providers.cert import CertProvider
    from pkiform.providers.file import FileProvider
    from pkiform.providers.keypair import KeypairProvider
    from pkiform.providers.kubeconfig import KubeconfigProvider
    from pkiform.providers.secret import SecretProvider
    from pkiform.providers.service import ServiceProvider

    return [
        CaProvider(),
        CertProvider(),
        KeypairProvider(),
        SecretProvider(),
        KubeconfigProvider(),
        FileProvider(),
        ServiceProvider(),
    ]
