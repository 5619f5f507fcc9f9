"""Nomad-facing: the go-plugin process contract and the gRPC services.

``plugin`` (socket, handshake line, shutdown, the one asyncio loop), ``goplugin`` (go-plugin's
own services), ``services`` (Nomad's base and driver services: decode, call one method of the
driver, encode), ``convert`` and ``status`` (protobuf to domain and back; errors to gRPC status
in one function), ``mtls`` (AutoMTLS) and ``log`` (hclog lines on stderr). The only package
that imports the generated code in ``_proto/``. It translates and does nothing else.

Layers of ``tart_trio``, each importing only those below it (``TYPE_CHECKING`` imports
included; ``tests/test_layers.py`` checks it): ``_main`` > ``_rpc`` > ``_driver`` > ``_task``
> ``_images`` > ``_guest`` | ``_tart`` > ``_host`` | ``_config`` > the shared leaves
``_model``, ``_errors``, ``_bridge``, ``_groups``, ``_version``.
"""
