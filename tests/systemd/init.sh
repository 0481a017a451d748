#!/bin/sh
# PID 1 of a throwaway PID+mount namespace: make a private, writable world, then exec systemd.
# Nothing here reaches the machine: /run, /tmp, /var, /dev are fresh tmpfs, and /etc, /opt,
# /usr/local are overlays whose changes live in this namespace only.
set -eu
mount -n -t tmpfs -o mode=755 tmpfs /run
# The source tree to install from, wherever it is (a clone under /tmp too), at a fixed place.
if [ -n "${JOBHERALD_SRC:-}" ]; then
    mkdir -p /run/jobherald-src
    mount --bind "$JOBHERALD_SRC" /run/jobherald-src
fi
mount -t tmpfs tmpfs /tmp
mkdir -p /run/overlay
for dir in etc opt usr/local var; do
    name=$(echo "$dir" | tr / _)
    mkdir -p "/run/overlay/$name/upper" "/run/overlay/$name/work"
    mount -t overlay overlay \
        -o "lowerdir=/$dir,upperdir=/run/overlay/$name/upper,workdir=/run/overlay/$name/work" "/$dir"
done
mount -t tmpfs tmpfs /var/tmp
mkdir -p /var/log/journal
mount -t tmpfs tmpfs /var/log/journal

# /dev with just what a service needs.
mount -t tmpfs -o mode=755,nosuid tmpfs /dev
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    name=${node%%:*}; rest=${node#*:}
    mknod -m 666 "/dev/$name" c "${rest%%:*}" "${rest#*:}"
done
touch /dev/console
mount --bind /dev/null /dev/console
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
ln -sf pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777 tmpfs /dev/shm

# This namespace's own cgroup tree (unified), so systemd never touches the machine's.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -o remount,bind,ro /proc/sys 2>/dev/null || { mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys; }

# Start nothing of the machine's own: hide every wants/requires/upholds folder and the generators.
for base in /etc/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
    [ -d "$base" ] || continue
    for wants in "$base"/*.wants "$base"/*.requires "$base"/*.upholds; do
        [ -d "$wants" ] && mount -t tmpfs -o ro,mode=755 tmpfs "$wants"
    done
done
for gens in /usr/lib/systemd/system-generators /lib/systemd/system-generators /etc/systemd/system-generators; do
    [ -d "$gens" ] && mount -t tmpfs -o ro,mode=755 tmpfs "$gens"
done
rm -f /etc/systemd/system/default.target

cat > /etc/systemd/system/jobherald-test.target <<'UNIT'
[Unit]
Description=jobherald test boot: the journal and nothing else
Wants=systemd-journald.service
UNIT

unset JOBHERALD_SRC
export container=jobherald-test
exec /lib/systemd/systemd --system --unit=jobherald-test.target
