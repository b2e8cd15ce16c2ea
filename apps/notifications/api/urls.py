from django.urls import path

from . import views

urlpatterns = [
    path(
        "notification-preferences/", views.PreferenceView.as_view(), name="notification-preferences"
    ),
    path(
        "notifications/unsubscribe",
        views.UnsubscribeView.as_view(),
        name="notifications-unsubscribe",
    ),
]
