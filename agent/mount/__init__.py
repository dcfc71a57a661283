"""Camera volumes mounted by the station: a small privileged helper and its notes to the daemon.

A udev rule (``units.UDEV_RULE``) asks systemd for ``bwc-mount@<kernel name>.service``
when a USB block device with a file system appears; that unit runs
``bwc-agent mount <kernel name>`` as root (:mod:`agent.mount.helper`), which

1. validates the kernel name and the device node (hostile input),
2. identifies the USB device from sysfs with the mass_storage driver's code,
3. applies the device policy (a refused device is never mounted; it leaves a
   refusal note the daemon turns into a ``device.refused`` log entry),
4. mounts it read-write at ``<mount_root>/<kernel name>`` (a name the kernel
   chose and no label can steer) with nosuid,nodev,noexec,noatime, owned by
   the agent's user, with the camera's code page; FUSE when the kernel lacks
   vfat/exfat,
5. stays, holding the mount, until the daemon writes the "done" note for
   this mount (dock session and releases over), the device disappears, or
   systemd stops the unit (the device was removed: ``BindsTo=``), and then
   unmounts (lazily if anything still holds it) and removes its notes.

Why notes in a directory rather than a lock the daemon holds: the daemon's
absence must not unmount a camera.  When the daemon crashes or restarts in
the middle of a copy, a released lock would unmount the camera and the copy
could only be redone after the officer re-docks; a missing "done" note keeps
the volume mounted, and the restarted daemon docks it again and redoes the
copy.  Only an explicit "done" for *this* mount (it carries the mount's
random token, so a late note never unmounts the next camera on the same
kernel name) lets it go.  The daemon needs no privilege for that: it writes
a file in a directory it owns, and the worst a forged note can do is
unmount a camera volume early.
"""
