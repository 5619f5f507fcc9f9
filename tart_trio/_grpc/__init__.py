"""The rpc layer: grpclib services that translate protobuf to domain calls and back.

This is the only package that imports generated protobuf code, and (with ``_plugin``)
the only place that bridges asyncio (grpclib) and trio.
"""
