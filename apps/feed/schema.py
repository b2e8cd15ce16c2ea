"""OpenAPI security scheme of the stream ticket (drf-spectacular extension)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class FeedTicketScheme(OpenApiAuthenticationExtension):
    target_class = "apps.feed.tickets.FeedTicketAuthentication"
    name = "feedTicket"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "query",
            "name": "ticket",
            "description": (
                "A stream ticket from POST /api/v1/events/tickets; opens GET /events/stream only."
            ),
        }
