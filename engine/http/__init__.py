"""The HTTP front door: ``cinderblock serve``, Cinder's block-storage backup API over WSGI.

Auth middlewares (noauth, keystone) put a :class:`~engine.http.context.RequestContext` into
the WSGI environ under :data:`~engine.http.context.CONTEXT_KEY`; the application reads only
that, so the routes never know which auth mode is in use.
"""
