"""Channels: everything between a rendered event and an apprise target.

- :mod:`notifier.channels.render`: pure rendering (markup, escaping, truncation, templates);
  imports no apprise, so the pure core can use it.
- :mod:`notifier.channels.targets`: apprise wiring: our schemas registered, a channel's URLs
  loaded into :class:`~notifier.channels.targets.Target` objects, URL validation for the
  config loader.
- :mod:`notifier.channels.senders`: one sender per target kind behind one switch
  (``sender_for``); apprise's own delivery for every schema without a sender of ours.
- :mod:`notifier.channels.webhook` / :mod:`notifier.channels.console`: the ``webhook://``,
  ``webhooks://`` and ``console://`` apprise plugins (URL parsing), and the webhook sender
  (signed CloudEvents over keep-alive httpx).
- :mod:`notifier.channels.slack` / :mod:`notifier.channels.email`: Block Kit messages and
  project-written mails, sent by the project over the URLs apprise parsed.
- :mod:`notifier.channels.privacy`: URL masking and secret scrubbing.
"""
