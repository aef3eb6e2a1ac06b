"""Channels: everything between a rendered event and an apprise target.

- :mod:`notifier.channels.render`: pure rendering (markup, escaping, truncation, templates);
  imports no apprise, so the pure core can use it.
- :mod:`notifier.channels.targets`: apprise wiring: our schemas registered, a channel's URLs
  loaded into :class:`~notifier.channels.targets.Target` objects, URL validation for the
  config loader.
- :mod:`notifier.channels.webhook` / :mod:`notifier.channels.console`: the ``webhook://``,
  ``webhooks://`` and ``console://`` apprise plugins.
- :mod:`notifier.channels.privacy`: URL masking and secret scrubbing.
"""
