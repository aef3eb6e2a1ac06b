"""bcs-notifier: watch Huawei Cloud BCS operations and notify when they move."""

__version__ = "0.1.0"
