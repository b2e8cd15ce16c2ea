"""DRF building blocks every app's API uses: strict input, the documented error body, pages.

Every app's api/ imports these, so they live in apps/core."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    inline_serializer,
)
from rest_framework import exceptions, serializers
from rest_framework.fields import SkipField
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.relations import PKOnlyObject

from apps.core.generations import GenerationalCache


class NamedSerializer(serializers.Serializer):
    """A serializer nested in a view names its schema component after the view.

    `TokenObtainApi.InputSerializer` becomes `TokenObtainInput`, so the nested Input/Output
    classes of many views never collide in the OpenAPI document.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        owner, _, name = cls.__qualname__.rpartition(".")
        if owner and "ref_name" not in vars(getattr(cls, "Meta", object)):
            ref_name = owner.removesuffix("Api") + name.removesuffix("Serializer")
            cls.Meta = type("Meta", (), {"ref_name": ref_name})


class InputSerializer(NamedSerializer):
    """Input that refuses fields it does not declare.

    Mass assignment (`organisation`, `role`, `is_staff`, ... where they are not inputs) answers
    400 naming each unknown field, rather than being silently dropped.
    """

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class ChoiceSetField(serializers.ListField):
    """A set of choices, returned sorted without duplicates. A form (multipart) may repeat the
    field or send the choices comma-separated in one value; JSON sends a list."""

    def __init__(self, *, choices, **kwargs):
        super().__init__(child=serializers.ChoiceField(choices=choices), **kwargs)

    default_error_messages = {
        "too_long": "Each choice is at most {limit} characters.",
    }
    # Longer than any choice: refused before it is echoed back in an error message.
    MAX_ITEM_LENGTH = 64

    def to_internal_value(self, data):
        if isinstance(data, str):
            data = [data]
        if isinstance(data, list) and all(isinstance(item, str) for item in data):
            if any(len(item) > self.MAX_ITEM_LENGTH * 4 for item in data):
                self.fail("too_long", limit=self.MAX_ITEM_LENGTH)
            data = [part.strip() for item in data for part in item.split(",") if part.strip()]
            if any(len(item) > self.MAX_ITEM_LENGTH for item in data):
                self.fail("too_long", limit=self.MAX_ITEM_LENGTH)
        # The count first: one error per item of a huge list would be a huge answer.
        if self.max_length is not None and isinstance(data, list) and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return sorted(set(super().to_internal_value(data)))


class CompiledOutput:
    """Mixin for output serializers: the fields are built once per class, not per instance.

    DRF builds every serializer instance's fields on first use (a `ModelSerializer` introspects
    its model each time) and then walks them generically for every row. On the read endpoints
    that was about a third of the CPU of a request. Here a prototype instance builds them once;
    `to_representation` then runs DRF's own loop (same `get_attribute`, same `to_representation`
    of each field, `SerializerMethodField`s called on the real instance), so the output is
    identical (tests/core/test_compiled_output.py compares both over real objects).

    Only for output whose fields do not depend on the instance or the context: a nested field is
    rendered by the prototype's copy, which has no context.
    """

    @classmethod
    def representation_plan(cls) -> list[tuple[str, Any, str | None]]:
        plan = cls.__dict__.get("_representation_plan")
        if plan is None:
            prototype = cls()  # type: ignore[call-arg]
            plan = [
                (
                    field.field_name,
                    field,
                    field.method_name
                    if isinstance(field, serializers.SerializerMethodField)
                    else None,
                )
                for field in prototype._readable_fields
            ]
            cls._representation_plan = plan  # type: ignore[attr-defined]
        return plan

    def to_representation(self, instance: Any) -> dict[str, Any]:
        ret: dict[str, Any] = {}
        for name, field, method_name in self.representation_plan():
            if method_name is not None:
                ret[name] = getattr(self, method_name)(instance)
                continue
            try:
                attribute = field.get_attribute(instance)
            except SkipField:
                continue
            check = attribute.pk if isinstance(attribute, PKOnlyObject) else attribute
            ret[name] = None if check is None else field.to_representation(attribute)
        return ret


class DetailOutputSerializer(serializers.Serializer):
    detail = serializers.CharField()


ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": inline_serializer(
            name="ErrorDetail",
            fields={
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "details": serializers.JSONField(),
                "request_id": serializers.CharField(),
            },
        )
    },
)

_ERROR_TEXT = {
    400: "Invalid input (`validation_error` lists each field) or a refused operation.",
    401: "Missing, invalid, expired or revoked credentials.",
    403: "Signed in, but the role (or credential kind) does not allow this.",
    404: "Not found in the caller's organisation (another organisation's ids answer the same).",
    409: "Conflicts with the current state (for example the last owner).",
    429: "Rate limited: wait `Retry-After` seconds.",
}


def _example(status: int) -> OpenApiExample:
    return OpenApiExample(
        f"error {status}",
        value={
            "error": {
                "code": "throttled" if status == 429 else "validation_error",
                "message": "Request was throttled." if status == 429 else "The request is invalid.",
                "details": {},
                "request_id": "4f1c2b7e9a3d4e5f8a7b6c5d4e3f2a1b",
            }
        },
        status_codes=[str(status)],
        response_only=True,
    )


def errors(
    *statuses: int, descriptions: Mapping[int, str] | None = None
) -> dict[int, OpenApiResponse]:
    """The documented error responses of an operation (429 is added to every one).

    `descriptions` adds statuses particular to the operation (402, 409, 413, ...) or words a
    standard one for it; every one is documented with the error body.
    """
    text = {**_ERROR_TEXT, **(descriptions or {})}
    return {
        status: OpenApiResponse(ErrorSerializer, description=text[status])
        for status in sorted({*statuses, *(descriptions or {}), 429})
    }


# The query parameters of every paginated list (apps.core.pagination.StandardPagination).
PAGE_PARAMETERS = [
    OpenApiParameter("page", int, required=False, description="Page number, from 1."),
    OpenApiParameter(
        "page_size", int, required=False, description="Rows per page (default 25, at most 100)."
    ),
]


def page_of(name: str, item: type[serializers.Serializer]) -> Any:
    """Schema of a page of `item` as StandardPagination renders it."""
    return inline_serializer(
        name=f"{name}Page",
        fields={
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": item(many=True),
        },
    )


def paginated_response(
    *,
    queryset: Any,
    serializer_class: Any,
    request: Any,
    view: Any,
    read_cache: GenerationalCache | None = None,
    scope: Any = None,
    key_prefix: str = "",
) -> Any:
    """A page of `queryset` in the project's standard pagination.

    `queryset` may be a list, or a callable returning the queryset (built only when the page
    is not served from the cache). With `read_cache`, the page is kept per `scope` (the
    organisation) and absolute URL (its links are absolute); invalid input (400) and pages out
    of range (404) are never cached. Change `key_prefix` when a page's shape or its filters change:
    during a rolling upgrade the previous release's processes go on caching pages under the old
    key (a filter they do not know is ignored, its page unfiltered), which must not be served.
    """
    from rest_framework.response import Response

    from apps.core.pagination import StandardPagination

    def render() -> Any:
        paginator = StandardPagination()
        rows = queryset() if callable(queryset) else queryset
        page = paginator.paginate_queryset(rows, request, view=view)
        return paginator.get_paginated_response(serializer_class(page, many=True).data).data

    if read_cache is None:
        return Response(render())
    key = f"{key_prefix}{request.build_absolute_uri()}"
    return Response(read_cache.get_or_load(scope, key, render))


class ContentNegotiation(DefaultContentNegotiation):
    """DRF's negotiation, but an unknown `?format=` is 406 Not Acceptable (as a bad `Accept`
    header is), not DRF's 404: the resource exists, only that representation does not."""

    def filter_renderers(self, renderers: list[Any], format: str) -> list[Any]:
        matching = [renderer for renderer in renderers if renderer.format == format]
        if not matching:
            raise exceptions.NotAcceptable(
                f"Unknown format {format!r}; choose one of "
                f"{', '.join(sorted({r.format for r in renderers}))}.",
                code="not_acceptable",
            )
        return matching
