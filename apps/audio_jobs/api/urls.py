from django.urls import path

from . import views

urlpatterns = [
    path("jobs", views.JobListCreateView.as_view(), name="jobs"),
    path("jobs/<uuid:job_id>", views.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<uuid:job_id>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<uuid:job_id>/legal-hold", views.JobLegalHoldView.as_view(), name="job-legal-hold"),
    path("jobs/<uuid:job_id>/queue", views.JobQueueView.as_view(), name="job-queue"),
    path(
        "jobs/<uuid:job_id>/retranscribe",
        views.JobRetranscribeView.as_view(),
        name="job-retranscribe",
    ),
    path("jobs/<uuid:job_id>/transcript", views.TranscriptView.as_view(), name="job-transcript"),
    path(
        "jobs/<uuid:job_id>/transcript/revisions",
        views.TranscriptRevisionListView.as_view(),
        name="job-transcript-revisions",
    ),
    path(
        "jobs/<uuid:job_id>/transcript/revert",
        views.TranscriptRevertView.as_view(),
        name="job-transcript-revert",
    ),
    path(
        "jobs/<uuid:job_id>/transcript/speakers",
        views.TranscriptSpeakersView.as_view(),
        name="job-transcript-speakers",
    ),
    path("jobs/<uuid:job_id>/shares", views.JobShareListCreateView.as_view(), name="job-shares"),
    path(
        "jobs/<uuid:job_id>/shares/<uuid:share_id>",
        views.JobShareDetailView.as_view(),
        name="job-share-detail",
    ),
    path("shared/<str:token>", views.SharedTranscriptView.as_view(), name="shared-transcript"),
    path("uploads", views.UploadCreateView.as_view(), name="uploads"),
]
