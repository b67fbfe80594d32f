"""The probe stage: the BPF program loaded into the kernel, attached in the first attach mode whose live
self-test passes, and read. program.py compiles and attaches it (the only module that imports bcc) in a
short-lived child (loader.py) that hands the fds over; attach.py runs the hook chain and the self-test;
btf.py gives the struct offsets; ringbuf.py and bpfsys.py read the ring buffer and the drop counter."""
