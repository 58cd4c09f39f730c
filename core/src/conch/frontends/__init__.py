"""Protocol frontends: each decodes its wire format into :class:`conch.inference.InferenceRequest`, calls
:class:`conch.service.InferenceService`, and encodes what comes back (``http`` and ``grpc``)."""
