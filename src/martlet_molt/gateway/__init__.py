"""The HTTP edge: routes, request and response models, SSE."""
