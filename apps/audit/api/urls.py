from django.urls import path

from .views import AuditEventDetailApi, AuditEventExportApi, AuditEventListApi

urlpatterns = [
    path("audit-events/", AuditEventListApi.as_view(), name="audit-event-list"),
    path("audit-events/export/", AuditEventExportApi.as_view(), name="audit-event-export"),
    path("audit-events/<uuid:event_id>/", AuditEventDetailApi.as_view(), name="audit-event-detail"),
]
