"""Triton's HTTP/REST protocol (KServe v2 plus Triton's extensions) as an ASGI app."""

from conch.frontends.http.app import HTTPApp, create_app

__all__ = ["HTTPApp", "create_app"]
