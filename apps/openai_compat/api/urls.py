from django.urls import path

from . import views

urlpatterns = [
    path("audio/transcriptions", views.TranscriptionView.as_view(), name="audio-transcriptions"),
    path("audio/translations", views.TranslationView.as_view(), name="audio-translations"),
]
