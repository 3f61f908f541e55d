#!/bin/sh
# A hook writer for shadowcopy, in the style of qemu-guest-agent's fsfreeze hooks:
#
#   shadowcopy writer run --name myapp --exec /path/to/sample-writer.sh --volume data
#
# shadowcopy runs this script with the event as its first argument. Exit status 0 is success;
# anything else fails the event, and the last line printed (stderr first) is the message the
# requester sees (the set is then aborted and every writer gets `abort`).
#
# Environment: SHADOWCOPY_EVENT, SHADOWCOPY_SET_ID (from `thaw` on), SHADOWCOPY_COPY_IDS,
# SHADOWCOPY_VOLUMES, SHADOWCOPY_COMPONENTS. Each event must be answered within 10 s; the time
# from `freeze` to `thaw` is at most 60 s.
#
# Events, in order: identify, prepare_for_backup, prepare_for_snapshot, freeze, [the instant],
# thaw, post_snapshot, backup_complete (maybe later: when the backup tool says it read the
# copies), backup_shutdown (the backup session ended); `abort` replaces the rest when a set
# fails. Around `shadowcopy revert`: pre_restore (failing refuses the revert), post_restore.
# An existing qemu-guest-agent hook maps `freeze` -> freeze and `thaw` -> thaw.

case "$1" in
  freeze)
    # Stop writing and flush: e.g. `mysql -e 'FLUSH TABLES WITH READ LOCK'` held by a helper,
    # `redis-cli BGSAVE` and wait, or `systemctl kill -s STOP myapp`.
    logger -t shadowcopy-hook "freeze (volumes: $SHADOWCOPY_VOLUMES)"
    ;;
  thaw|abort)
    # Resume: undo whatever freeze did (abort may come without a freeze before it).
    logger -t shadowcopy-hook "$1 (set $SHADOWCOPY_SET_ID)"
    ;;
  *)
    # identify, prepare_for_backup, prepare_for_snapshot, post_snapshot, backup_complete, ...
    ;;
esac
exit 0
