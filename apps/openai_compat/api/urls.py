from django.urls import path, re_path

from ..exceptions import not_found
from . import views

urlpatterns = [
    path("audio/transcriptions", views.TranscriptionView.as_view(), name="audio-transcriptions"),
    path("audio/translations", views.TranslationView.as_view(), name="audio-translations"),
    path("models", views.ModelListView.as_view(), name="models"),
    path("models/<str:model>", views.ModelDetailView.as_view(), name="model"),
    # Last: any other address here answers in OpenAI's error shape.
    re_path(r"^.*$", not_found, name="not-found"),
]
