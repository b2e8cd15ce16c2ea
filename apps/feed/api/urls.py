from django.urls import path

from . import views

urlpatterns = [
    path("events", views.FeedView.as_view(), name="events"),
    path("events/stream", views.FeedStreamView.as_view(), name="events-stream"),
    path("events/tickets", views.TicketView.as_view(), name="events-tickets"),
]
