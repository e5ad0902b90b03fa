"""The service's HTTP routes, one `APIRouter` per area (included by `service.app.create_app`)."""

from service.routes import classification, collections, differences, embeddings, health, stores

ROUTERS = (health.router, embeddings.router, differences.router, classification.router, stores.router, collections.router)

__all__ = ["ROUTERS"]
