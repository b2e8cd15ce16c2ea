from django.urls import path

from . import views

urlpatterns = [
    path("reports/", views.ReportListCreateView.as_view(), name="reports"),
    path("reports/exports/", views.ExportCreateView.as_view(), name="report-exports"),
    path("reports/<uuid:report_id>/", views.ReportDetailView.as_view(), name="report-detail"),
    path("reports/<uuid:report_id>/retry/", views.ReportRetryView.as_view(), name="report-retry"),
    path(
        "reports/<uuid:report_id>/download",
        views.ReportDownloadView.as_view(),
        name="report-download",
    ),
]
