"""Microscopes over ZeroMQ: the wire format (:mod:`.protocol`), a server that wraps any
:class:`~stage_acceptance.microscope.Microscope` (:mod:`.server`) and the client that is
itself a :class:`~stage_acceptance.microscope.Microscope` (:mod:`.client`)."""
