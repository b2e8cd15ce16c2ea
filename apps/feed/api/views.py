"""The live feed: read it (JSON, by cursor), stream it (server-sent events), and get a ticket
for a browser's EventSource. Any member of the organisation (viewer and up) and its API keys."""

from __future__ import annotations

import math
import weakref
from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import renderers, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from apps.accounts.models import Role
from apps.accounts.tenancy import IsHumanUser, TenantPermission, get_tenant
from apps.core.drf import errors
from apps.core.exceptions import ApplicationError, NotFoundError

from .. import selectors, streams
from ..models import FeedEventType
from ..tickets import PARAMETER, FeedTicketAuthentication, ticket_issue

# A bigint cursor: at most 19 digits (a longer one is refused before it reaches the database).
CURSOR_MAX = 2**63 - 1


class FeedUnavailable(ApplicationError):
    status_code = 503
    code = "feed_busy"


class FeedStreamsLimit(ApplicationError):
    """The caller (user or API key), or its organisation, holds as many streams as it may."""

    status_code = 429
    code = "feed_streams_limit"


def _streams_limit(reached: str) -> FeedStreamsLimit:
    if reached == streams.PRINCIPAL:
        limit = settings.FEED_MAX_STREAMS_PER_PRINCIPAL
        message = f"You have {limit} streams open, as many as you may; close one or retry later."
    else:
        limit = settings.FEED_MAX_STREAMS_PER_ORGANISATION
        message = (
            f"This organisation has {limit} streams open, as many as it may; close one or "
            "retry later."
        )
    # A place held by a process that died is free after this at the latest.
    wait = math.ceil(streams.lease_seconds())
    return FeedStreamsLimit(
        message,
        details={"limit": limit, "per": reached, "retry_after_seconds": wait},
        headers={"Retry-After": str(wait)},
    )


class EventOutput(serializers.Serializer):
    id = serializers.IntegerField()
    type = serializers.ChoiceField(choices=FeedEventType.choices)
    subject_id = serializers.UUIDField(allow_null=True)
    created_at = serializers.DateTimeField()
    data = serializers.DictField()


class FeedPageOutput(serializers.Serializer):
    results = EventOutput(many=True)
    cursor = serializers.IntegerField(help_text="Read on with `?after=<cursor>`.")
    more = serializers.BooleanField(help_text="More events are waiting: read on at once.")
    reset = serializers.BooleanField(
        help_text="Events after your cursor are no longer kept: read the current state again."
    )


class FeedInput(serializers.Serializer):
    # Other query parameters are ignored, as on every list (`format`, `organisation`, ...).
    after = serializers.IntegerField(required=False, min_value=0, max_value=CURSOR_MAX)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=100, default=50)


def _cursor(value: str | None, name: str) -> int | None:
    """A cursor given by the client: a whole number from 0, else 400."""
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 19 or int(value) > CURSOR_MAX:
        raise ApplicationError(
            f"{name} must be an event id (a whole number from 0).", code="invalid_cursor"
        )
    return int(value)


class FeedView(APIView):
    permission_classes = [TenantPermission]

    @extend_schema(
        operation_id="events_list",
        parameters=[
            OpenApiParameter(
                "after",
                int,
                required=False,
                description="Events after this id. Without it: the newest events.",
            ),
            OpenApiParameter("limit", int, required=False, description="At most 100 (50)."),
        ],
        responses={200: FeedPageOutput, **errors(400, 401, 403, 404)},
    )
    def get(self, request: Request, version: str) -> Response:
        query = FeedInput(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        tenant = get_tenant(request)
        page = selectors.feed_read(
            organisation_id=tenant.organisation.pk,
            after=query.validated_data.get("after"),
            limit=query.validated_data["limit"],
        )
        return Response(
            {
                "results": [streams.event_json(event) for event in page.events],
                "cursor": page.cursor,
                "more": page.more,
                "reset": page.reset,
            }
        )


class EventStreamRenderer(renderers.BaseRenderer):
    """Accepts `text/event-stream`; what it renders itself is only an error body (as JSON)."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None):
        return renderers.JSONRenderer().render(data)


class FeedStreamView(APIView):
    permission_classes = [TenantPermission]
    authentication_classes = [
        *api_settings.DEFAULT_AUTHENTICATION_CLASSES,
        FeedTicketAuthentication,
    ]
    renderer_classes = [renderers.JSONRenderer, EventStreamRenderer]

    @extend_schema(
        operation_id="events_stream",
        parameters=[
            OpenApiParameter(
                "Last-Event-ID",
                int,
                OpenApiParameter.HEADER,
                required=False,
                description="Resume after this event (EventSource sends it when reconnecting).",
            ),
            OpenApiParameter(
                "after", int, required=False, description="Resume after this event id."
            ),
            OpenApiParameter(
                PARAMETER,
                str,
                required=False,
                description="A ticket from POST /events/tickets (for EventSource).",
            ),
        ],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                # One server-sent event, as OpenAPI describes an event stream's items.
                {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "description": "The event id (the cursor)."},
                        "data": {
                            "type": "string",
                            "description": "The event as JSON, with the fields of GET /events.",
                        },
                        "event": {"type": "string"},
                        "retry": {"type": "integer"},
                    },
                },
                description=(
                    "Server-sent events: `id: <event id>` and `data: <event as JSON>` per event "
                    "(the fields of GET /events), `: keep-alive` comments, and a "
                    '`{"type": "feed.reset"}` event when events after the cursor are no '
                    "longer kept."
                ),
            ),
            **errors(
                400,
                401,
                403,
                404,
                descriptions={
                    429: (
                        "Rate limited, or `feed_streams_limit`: the caller (user or API key) or "
                        "its organisation holds as many streams as it may; wait `Retry-After` "
                        "seconds or close one."
                    ),
                    503: "This server holds as many streams as it may; retry later.",
                },
            ),
        },
    )
    def get(self, request: Request, version: str) -> StreamingHttpResponse:
        header = request.headers.get("Last-Event-ID")
        cursor = _cursor(header, "Last-Event-ID")
        if header is None or header.strip() == "":
            cursor = _cursor(request.query_params.get("after"), "after")
        tenant = get_tenant(request)
        claims = request.auth if isinstance(request.auth, dict) else None
        if claims is not None and claims.get("org") != str(tenant.organisation.pk):
            # A ticket opens the feed of its own organisation only (whatever X-Organisation says).
            raise NotFoundError("No such organisation.", code="organisation_not_found")
        access = streams.Access.of(tenant)
        # Every open response of this endpoint holds a place under the caller's and the
        # organisation's limits, shared by all processes (under WSGI only while it is written).
        lease = streams.Lease(access)
        slot: streams.Slot | None = None
        if isinstance(request._request, ASGIRequest):
            slot = streams.Slot(lease)
            if not slot.take():
                raise FeedUnavailable(
                    "This server holds as many streams as it may; retry later.",
                    headers={"Retry-After": str(max(1, round(settings.FEED_POLL_SECONDS)))},
                )
            reached = lease.take()
            if reached is not None:
                slot.release()
                raise _streams_limit(reached)
            body: Any = streams.live(access, cursor, slot)
            release = slot.release
        else:
            reached = lease.take()
            if reached is not None:
                raise _streams_limit(reached)
            body = streams.poll_once(access, cursor)
            release = lease.release
        # The authentication and tenancy queries are done: the stream's own reads check out a
        # connection each time.
        streams.release_connection()
        response = StreamingHttpResponse(body, content_type="text/event-stream; charset=utf-8")
        # The places are given back by the stream's end; by the response's close if the body
        # never started; or, if the client left before even that, when the body is collected.
        response._resource_closers.append(release)
        weakref.finalize(body, release)
        response["Cache-Control"] = "no-cache, no-store"
        # nginx and similar proxies would otherwise hold the events back in their buffers.
        response["X-Accel-Buffering"] = "no"
        return response


class TicketView(APIView):
    permission_classes = [IsHumanUser, TenantPermission]
    # A ticket only reads the feed: viewers may have one (a POST would need `member`).
    required_role = Role.VIEWER

    @extend_schema(
        operation_id="events_ticket_create",
        request=None,
        responses={
            201: inline_serializer(
                "FeedTicket",
                {"ticket": serializers.CharField(), "expires_in": serializers.IntegerField()},
            ),
            **errors(401, 403, 404),
        },
    )
    def post(self, request: Request, version: str) -> Response:
        tenant = get_tenant(request)
        ticket = ticket_issue(user=request.user, organisation_id=tenant.organisation.pk)
        return Response({"ticket": ticket, "expires_in": settings.FEED_TICKET_SECONDS}, status=201)
