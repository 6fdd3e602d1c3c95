"""QEMU 7.2's HMP command tables as ``help`` prints them: name (``|`` separates aliases),
parameters and help text, in table order; and the log items ``help log`` lists.

Generated from the output of ``help``, ``help info`` and ``help <command>`` of
qemu-system-x86_64 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3); not edited by hand.
"""

from __future__ import annotations

Entry = tuple[str, str, str]

COMMANDS: tuple[Entry, ...] = (
    ("announce_self", "[interfaces] [id]", "Trigger GARP/RARP announcements"),
    ("balloon", "target", "request VM to change its memory allocation (in MB)"),
    ("block_job_cancel", "[-f] device",
     "stop an active background block operation (use -f\n"
     "\t\t\t if you want to abort the operation immediately\n"
     "\t\t\t instead of keep running until data is in sync)"),
    ("block_job_complete", "device", "stop an active background block operation"),
    ("block_job_pause", "device", "pause an active background block operation"),
    ("block_job_resume", "device", "resume a paused background block operation"),
    ("block_job_set_speed", "device speed", "set maximum speed for a background block operation"),
    ("block_resize", "device size", "resize a block image"),
    ("block_set_io_throttle", "device bps bps_rd bps_wr iops iops_rd iops_wr",
     "change I/O throttle limits for a block drive"),
    ("block_stream", "device [speed [base]]", "copy data from a backing file into a block device"),
    ("boot_set", "bootdevice", "define new values for the boot device list"),
    ("calc_dirty_rate", "[-r] [-b] second [sample_pages_per_GB]",
     "start a round of guest dirty rate measurement (using -r to\n"
     "\t\t\t specify dirty ring as the method of calculation and\n"
     "\t\t\t -b to specify dirty bitmap as method of calculation)"),
    ("cancel_vcpu_dirty_limit", "[cpu_index]",
     "cancel dirty page rate limit, use cpu_index to cancel\n"
     "\t\t\t\t\t limit on a specified virtual cpu"),
    ("change", "device [-f] filename [format [read-only-mode]]",
     "change a removable medium, optional format, use -f to force the operation"),
    ("chardev-add", "args", "add chardev"),
    ("chardev-change", "id args", "change chardev"),
    ("chardev-remove", "id", "remove chardev"),
    ("chardev-send-break", "id", "send a break on chardev"),
    ("client_migrate_info", "protocol hostname port tls-port cert-subject",
     "set migration information for remote display"),
    ("closefd", "closefd name", "close a file descriptor previously passed via SCM rights"),
    ("commit", "device|all",
     "commit changes to the disk images (if -snapshot is used) or backing files"),
    ("cont|c", "", "resume emulation"),
    ("cpu", "index", "set the default CPU"),
    ("delvm", "tag", "delete a VM snapshot from its tag"),
    ("device_add", "driver[,prop=value][,...]", "add device, like -device on the command line"),
    ("device_del", "device", "remove device"),
    ("drive_add",
     "[-n] [[<domain>:]<bus>:]<slot>\n"
     "[file=file][,if=type][,bus=n]\n"
     "[,unit=m][,media=d][,index=i]\n"
     "[,snapshot=on|off][,cache=on|off]\n"
     "[,readonly=on|off][,copy-on-read=on|off]",
     "add drive to PCI storage controller"),
    ("drive_backup", "[-n] [-f] [-c] device target [format]",
     "initiates a point-in-time\n"
     "\t\t\tcopy for a device. The device's contents are\n"
     "\t\t\tcopied to the new image file, excluding data that\n"
     "\t\t\tis written after the command is started.\n"
     "\t\t\tThe -n flag requests QEMU to reuse the image found\n"
     "\t\t\tin new-image-file, instead of recreating it from scratch.\n"
     "\t\t\tThe -f flag requests QEMU to copy the whole disk,\n"
     "\t\t\tso that the result does not need a backing file.\n"
     "\t\t\tThe -c flag requests QEMU to compress backup data\n"
     "\t\t\t(if the target format supports it).\n"
     "\t\t\t"),
    ("drive_del", "device", "remove host block device"),
    ("drive_mirror", "[-n] [-f] device target [format]",
     "initiates live storage\n"
     "\t\t\tmigration for a device. The device's contents are\n"
     "\t\t\tcopied to the new image file, including data that\n"
     "\t\t\tis written after the command is started.\n"
     "\t\t\tThe -n flag requests QEMU to reuse the image found\n"
     "\t\t\tin new-image-file, instead of recreating it from scratch.\n"
     "\t\t\tThe -f flag requests QEMU to copy the whole disk,\n"
     "\t\t\tso that the result does not need a backing file.\n"
     "\t\t\t"),
    ("dump-guest-memory", "[-p] [-d] [-z|-l|-s|-w] filename [begin length]",
     "dump guest memory into file 'filename'.\n"
     "\t\t\t-p: do paging to get guest's memory mapping.\n"
     "\t\t\t-d: return immediately (do not wait for completion).\n"
     "\t\t\t-z: dump in kdump-compressed format, with zlib compression.\n"
     "\t\t\t-l: dump in kdump-compressed format, with lzo compression.\n"
     "\t\t\t-s: dump in kdump-compressed format, with snappy compression.\n"
     "\t\t\t-w: dump in Windows crashdump format (can be used instead of ELF-dump "
     "converting),\n"
     "\t\t\t    for Windows x86 and x64 guests with vmcoreinfo driver only.\n"
     "\t\t\tbegin: the starting physical address.\n"
     "\t\t\tlength: the memory size, in bytes."),
    ("dumpdtb", "filename", "dump the FDT in dtb format to 'filename'"),
    ("eject", "[-f] device", "eject a removable medium (use -f to force it)"),
    ("exit_preconfig", "", "exit the preconfig state"),
    ("expire_password", "protocol time [-d display]", "set spice/vnc password expire-time"),
    ("gdbserver", "[device]",
     "start gdbserver on given device (default 'tcp::1234'), stop with 'none'"),
    ("getfd", "getfd name", "receive a file descriptor via SCM rights and assign it a name"),
    ("gpa2hpa", "addr",
     "print the host physical address corresponding to a guest physical address"),
    ("gpa2hva", "addr",
     "print the host virtual address corresponding to a guest physical address"),
    ("gva2gpa", "addr",
     "print the guest physical address corresponding to a guest virtual address"),
    ("help|?", "[cmd]", "show the help"),
    ("hostfwd_add", "[netdev_id] [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport",
     "redirect TCP or UDP connections from host to guest (requires -net user)"),
    ("hostfwd_remove", "[netdev_id] [tcp|udp]:[hostaddr]:hostport",
     "remove host-to-guest TCP or UDP redirection"),
    ("i", "/fmt addr", "I/O port read"),
    ("info", "[subcommand]", "show various information about the system state"),
    ("loadvm", "tag", "restore a VM snapshot from its tag"),
    ("log", "item1[,...]", "activate logging of the specified items"),
    ("logfile", "filename", "output logs to 'filename'"),
    ("mce", "[-b] cpu bank status mcgstatus addr misc",
     "inject a MCE on the given CPU [and broadcast to other CPUs with -b option]"),
    ("memsave", "addr size file",
     "save to disk virtual memory dump starting at 'addr' of size 'size'"),
    ("migrate", "[-d] [-b] [-i] [-r] uri",
     "migrate to URI (using -d to not wait for completion)\n"
     "\t\t\t -b for migration without shared storage with full copy of disk\n"
     "\t\t\t -i for migration without shared storage with incremental copy "
     "of disk (base image shared between src and destination)\n"
     "\t\t\t -r to resume a paused migration"),
    ("migrate_cancel", "", "cancel the current VM migration"),
    ("migrate_continue", "state", "Continue migration from the given paused state"),
    ("migrate_incoming", "uri", "Continue an incoming migration from an -incoming defer"),
    ("migrate_pause", "", "Pause an ongoing migration (postcopy-only)"),
    ("migrate_recover", "uri", "Continue a paused incoming postcopy migration"),
    ("migrate_set_capability", "capability state",
     "Enable/Disable the usage of a capability for migration"),
    ("migrate_set_parameter", "parameter value", "Set the parameter for migration"),
    ("migrate_start_postcopy", "",
     "Followup to a migration command to switch the migration to postcopy mode. "
     "The postcopy-ram capability must be set on both source and destination "
     "before the original migration command ."),
    ("mouse_button", "state", "change mouse button state (1=L, 2=M, 4=R)"),
    ("mouse_move", "dx dy [dz]", "send mouse move events"),
    ("mouse_set", "index", "set which mouse device receives events"),
    ("nbd_server_add", "nbd_server_add [-w] device [name]", "export a block device via NBD"),
    ("nbd_server_remove", "nbd_server_remove [-f] name",
     "remove an export previously exposed via NBD"),
    ("nbd_server_start", "nbd_server_start [-a] [-w] host:port",
     "serve block devices on the given host and port"),
    ("nbd_server_stop", "nbd_server_stop", "stop serving block devices using the NBD protocol"),
    ("netdev_add",
     "[user|tap|socket|stream|dgram|vde|bridge|hubport|netmap|vhost-user],id=str[,prop=value]"
     "[,...]",
     "add host network device"),
    ("netdev_del", "id", "remove host network device"),
    ("nmi", "", "inject an NMI"),
    ("o", "/fmt addr value", "I/O port write"),
    ("object_add", "[qom-type=]type,id=str[,prop=value][,...]", "create QOM object"),
    ("object_del", "id", "destroy QOM object"),
    ("pcie_aer_inject_error", "[-a] [-c] id <error_status> [<tlp header> [<tlp header prefix>]]",
     "inject pcie aer error\n"
     "\t\t\t -a for advisory non fatal error\n"
     "\t\t\t -c for correctable error\n"
     "\t\t\t<id> = qdev device id\n"
     "\t\t\t<error_status> = error string or 32bit\n"
     "\t\t\t<tlp header> = 32bit x 4\n"
     "\t\t\t<tlp header prefix> = 32bit x 4"),
    ("pmemsave", "addr size file",
     "save to disk physical memory dump starting at 'addr' of size 'size'"),
    ("print|p", "/fmt expr", "print expression value (use $reg for CPU register access)"),
    ("qemu-io", "[-d] [device] \"[command]\"",
     "run a qemu-io command on a block device\n"
     "\t\t\t-d: [device] is a device ID rather than a drive ID or node name"),
    ("qom-get", "path property", "print QOM property"),
    ("qom-list", "path", "list QOM properties"),
    ("qom-set", "[-j] path property value",
     "set QOM property.\n"
     "\t\t\t-j: the value is specified in json format."),
    ("quit|q", "", "quit the emulator"),
    ("replay_break", "icount", "set breakpoint at the specified instruction count"),
    ("replay_delete_break", "", "remove replay breakpoint"),
    ("replay_seek", "icount", "replay execution to the specified instruction count"),
    ("ringbuf_read", "device size", "Read from a ring buffer character device"),
    ("ringbuf_write", "device data", "Write to a ring buffer character device"),
    ("savevm", "tag", "save a VM snapshot. If no tag is provided, a new snapshot is created"),
    ("screendump", "filename [-f format] [device [head]]",
     "save screen from head 'head' of display device 'device'in specified format "
     "'format' as image 'filename'.Currently only 'png' and 'ppm' formats are "
     "supported."),
    ("sendkey", "keys [hold_ms]",
     "send keys to the VM (e.g. 'sendkey ctrl-alt-f1', default hold time=100 "
     "ms)"),
    ("set_link", "name on|off", "change the link status of a network adapter"),
    ("set_password", "protocol password [-d display] [action-if-connected]",
     "set spice/vnc password"),
    ("set_vcpu_dirty_limit", "dirty_rate [cpu_index]",
     "set dirty page rate limit, use cpu_index to set limit\n"
     "\t\t\t\t\t on a specified virtual cpu"),
    ("singlestep", "[on|off]", "run emulation in singlestep mode or switch to normal mode"),
    ("snapshot_blkdev", "[-n] device [new-image-file] [format]",
     "initiates a live snapshot\n"
     "\t\t\tof device. If a new image file is specified, the\n"
     "\t\t\tnew image file will become the new root image.\n"
     "\t\t\tIf format is specified, the snapshot file will\n"
     "\t\t\tbe created in that format.\n"
     "\t\t\tThe default format is qcow2.  The -n flag requests QEMU\n"
     "\t\t\tto reuse the image found in new-image-file, instead of\n"
     "\t\t\trecreating it from scratch."),
    ("snapshot_blkdev_internal", "device name",
     "take an internal snapshot of device.\n"
     "\t\t\tThe format of the image used by device must\n"
     "\t\t\tsupport it, such as qcow2.\n"
     "\t\t\t"),
    ("snapshot_delete_blkdev_internal", "device name [id]",
     "delete an internal snapshot of device.\n"
     "\t\t\tIf id is specified, qemu will try delete\n"
     "\t\t\tthe snapshot matching both id and name.\n"
     "\t\t\tThe format of the image used by device must\n"
     "\t\t\tsupport it, such as qcow2.\n"
     "\t\t\t"),
    ("stopcapture", "capture index", "stop capture"),
    ("stop|s", "", "stop emulation"),
    ("sum", "addr size", "compute the checksum of a memory region"),
    ("sync-profile", "[on|off|reset]",
     "enable, disable or reset synchronization profiling. With no arguments, "
     "prints whether profiling is on or off."),
    ("system_powerdown", "", "send system power down event"),
    ("system_reset", "", "reset the system"),
    ("system_wakeup", "", "wakeup guest from suspend"),
    ("trace-event", "name on|off [vcpu]",
     "changes status of a specific trace event (vcpu: vCPU to set, default "
     "is all)"),
    ("watchdog_action", "[reset|shutdown|poweroff|pause|debug|none]", "change watchdog action"),
    ("wavcapture", "path audiodev [frequency [bits [channels]]]",
     "capture audio to a wave file (default frequency=44100 bits=16 channels=2)"),
    ("x", "/fmt addr", "virtual memory dump starting at 'addr'"),
    ("x_colo_lost_heartbeat", "",
     "Tell COLO that heartbeat is lost,\n"
     "\t\t\ta failover or takeover is needed."),
    ("xp", "/fmt addr", "physical memory dump starting at 'addr'"),
)

INFO_COMMANDS: tuple[Entry, ...] = (
    ("balloon", "", "show balloon information"),
    ("block", "[-n] [-v] [device]",
     "show info of one block device or all block devices (-n: show named nodes; "
     "-v: show details)"),
    ("block-jobs", "", "show progress of ongoing block device operations"),
    ("blockstats", "", "show block device statistics"),
    ("capture", "", "show capture information"),
    ("chardev", "", "show the character devices"),
    ("cpus", "", "show infos for each CPU"),
    ("dirty_rate", "", "show dirty rate information"),
    ("dump", "", "Display the latest dump status"),
    ("history", "", "show the command line history"),
    ("hotpluggable-cpus", "", "Show information about hotpluggable CPUs"),
    ("iothreads", "", "show iothreads"),
    ("irq", "", "show the interrupts statistics (if available)"),
    ("jit", "", "show dynamic compiler info"),
    ("kvm", "", "show KVM information"),
    ("lapic", "[apic-id]",
     "show local apic state (apic-id: local apic to read, default is which "
     "of current CPU)"),
    ("mem", "", "show the active virtual memory mappings"),
    ("memdev", "", "show memory backends"),
    ("memory-devices", "", "show memory devices"),
    ("memory_size_summary", "",
     "show the amount of initially allocated and present hotpluggable (if enabled) "
     "memory in bytes."),
    ("mice", "", "show which guest mouse is receiving events"),
    ("migrate", "", "show migration status"),
    ("migrate_capabilities", "", "show current migration capabilities"),
    ("migrate_parameters", "", "show current migration parameters"),
    ("mtree", "[-f][-d][-o][-D]",
     "show memory tree (-f: dump flat view for address spaces;-d: dump dispatch "
     "tree, valid with -f only);-o: dump region owners/parents;-D: dump disabled "
     "regions"),
    ("name", "", "show the current VM name"),
    ("network", "", "show the network state"),
    ("numa", "", "show NUMA information"),
    ("opcount", "", "show dynamic compiler opcode counters"),
    ("pci", "", "show PCI info"),
    ("pic", "", "show PIC state"),
    ("profile", "", "show profiling information"),
    ("qdm", "", "show qdev device model list"),
    ("qom-tree", "[path]", "show QOM composition tree"),
    ("qtree", "", "show device tree"),
    ("ramblock", "", "Display system ramblock information"),
    ("rdma", "", "show RDMA state"),
    ("registers", "[-a|vcpu]",
     "show the cpu registers (-a: show register info for all cpus; vcpu: specific "
     "vCPU to query; show the current CPU's registers if no argument is specified)"),
    ("replay", "", "show record/replay information"),
    ("rocker", "name", "Show rocker switch"),
    ("rocker-of-dpa-flows", "name [tbl_id]", "Show rocker OF-DPA flow tables"),
    ("rocker-of-dpa-groups", "name [type]", "Show rocker OF-DPA groups"),
    ("rocker-ports", "name", "Show rocker ports"),
    ("roms", "", "show roms"),
    ("sev", "", "show SEV information"),
    ("sgx", "", "show intel SGX information"),
    ("snapshots", "", "show the currently saved VM snapshots"),
    ("spice", "", "show the spice server status"),
    ("stats", "target [names] [provider]",
     "show statistics for the given target (vm or vcpu); optionally filter "
     "byname (comma-separated list, or * for all) and provider"),
    ("status", "", "show the current VM status (running|paused)"),
    ("sync-profile", "[-m] [-n] [max]",
     "show synchronization profiling info, up to max entries (default: 10), "
     "sorted by total wait time. (-m: sort by mean wait time; -n: do not coalesce "
     "objects with the same call site)"),
    ("tlb", "", "show virtual to physical memory mappings"),
    ("tpm", "", "show the TPM device"),
    ("trace-events", "[name] [vcpu]",
     "show available trace-events & their state (name: event name pattern; "
     "vcpu: vCPU to query, default is any)"),
    ("usb", "", "show guest USB devices"),
    ("usbhost", "", "show host USB devices"),
    ("usernet", "", "show user network stack connection states"),
    ("uuid", "", "show the current VM UUID"),
    ("vcpu_dirty_limit", "", "show dirty page limit information of all vCPU"),
    ("version", "", "show the version of QEMU"),
    ("virtio", "", "List all available virtio devices"),
    ("virtio-queue-element", "path queue [index]", "Display element of a given virtio queue"),
    ("virtio-queue-status", "path queue", "Display status of a given virtio queue"),
    ("virtio-status", "path", "Display status of a given virtio device"),
    ("virtio-vhost-queue-status", "path queue", "Display status of a given vhost queue"),
    ("vm-generation-id", "", "Show Virtual Machine Generation ID"),
    ("vnc", "", "show the vnc server status"),
)

LOG_HELP = (
    "Log items (comma separated):\n"
    "none            remove all logs\n"
    "out_asm         show generated host assembly code for each compiled TB\n"
    "in_asm          show target assembly code for each compiled TB\n"
    "op              show micro ops for each compiled TB\n"
    "op_opt          show micro ops after optimization\n"
    "op_ind          show micro ops before indirect lowering\n"
    "int             show interrupts/exceptions in short format\n"
    "exec            show trace before each executed TB (lots of logs)\n"
    "cpu             show CPU registers before entering a TB (lots of logs)\n"
    "fpu             include FPU registers in the 'cpu' logging\n"
    "mmu             log MMU-related activities\n"
    "pcall           x86 only: show protected mode far calls/returns/exceptions\n"
    "cpu_reset       show CPU state before CPU resets\n"
    "unimp           log unimplemented functionality\n"
    "guest_errors    log when the guest OS does something invalid (eg accessing "
    "a\n"
    "non-existent register)\n"
    "page            dump pages at beginning of user mode emulation\n"
    "nochain         do not chain compiled TBs so that \"exec\" and \"cpu\" "
    "show\n"
    "complete traces\n"
    "plugin          output from TCG plugins\n"
    "\n"
    "strace          log every user-mode syscall, its input, and its result\n"
    "tid             open a separate log file per thread; filename must contain "
    "'%d'\n"
    "trace:PATTERN   enable trace events\n"
    "\n"
    "Use \"log trace:help\" to get a list of trace events.\n"
    "\n"
)
"""What ``help log`` prints: the log items of this build, verbatim."""
