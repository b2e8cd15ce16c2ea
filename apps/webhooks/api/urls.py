from django.urls import path

from . import views

urlpatterns = [
    path("webhooks/endpoints/", views.EndpointListCreateView.as_view(), name="webhook-endpoints"),
    path(
        "webhooks/endpoints/<uuid:endpoint_id>/",
        views.EndpointDetailView.as_view(),
        name="webhook-endpoint",
    ),
    path(
        "webhooks/endpoints/<uuid:endpoint_id>/disable/",
        views.EndpointDisableView.as_view(),
        name="webhook-endpoint-disable",
    ),
    path(
        "webhooks/endpoints/<uuid:endpoint_id>/enable/",
        views.EndpointEnableView.as_view(),
        name="webhook-endpoint-enable",
    ),
    path(
        "webhooks/endpoints/<uuid:endpoint_id>/rotate-secret/",
        views.EndpointRotateSecretView.as_view(),
        name="webhook-endpoint-rotate",
    ),
    path(
        "webhooks/endpoints/<uuid:endpoint_id>/test/",
        views.EndpointTestView.as_view(),
        name="webhook-endpoint-test",
    ),
    path(
        "webhooks/endpoints/<uuid:endpoint_id>/deliveries/",
        views.DeliveryListView.as_view(),
        name="webhook-endpoint-deliveries",
    ),
    path(
        "webhooks/endpoints/<uuid:endpoint_id>/deliveries/<uuid:delivery_id>/redeliver/",
        views.DeliveryRedeliverView.as_view(),
        name="webhook-delivery-redeliver",
    ),
]
