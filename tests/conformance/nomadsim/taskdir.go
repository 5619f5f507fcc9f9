package main

// The Nomad alloc/task directory layout and a logmon-like FIFO reader.

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

type allocPaths struct {
	StdoutFifo, StderrFifo string
	StdoutLog, StderrLog   string
	TaskDir                string
}

func pathsFor(allocDir, task string) allocPaths {
	logs := filepath.Join(allocDir, "alloc", "logs")
	return allocPaths{
		StdoutFifo: filepath.Join(logs, "."+task+".stdout.fifo"),
		StderrFifo: filepath.Join(logs, "."+task+".stderr.fifo"),
		StdoutLog:  filepath.Join(logs, task+".stdout.0"),
		StderrLog:  filepath.Join(logs, task+".stderr.0"),
		TaskDir:    filepath.Join(allocDir, task),
	}
}

// createAllocDir builds <alloc_dir>/alloc/{logs,tmp,data} and
// <alloc_dir>/<task>/{local,secrets,private,tmp} plus the two log FIFOs,
// with Nomad's modes (client/allocdir: allocMkdirAll and dropDirPermissions
// make every directory but the allocation's own 0777, sticky for tmp, and
// owned by "nobody" when the client is root).
func createAllocDir(allocDir, task string) (allocPaths, error) {
	p := pathsFor(allocDir, task)
	if err := os.MkdirAll(allocDir, 0o755); err != nil {
		return p, err
	}
	dirs := []struct {
		path string
		mode os.FileMode
	}{
		{filepath.Join(allocDir, "alloc"), 0o777},
		{filepath.Join(allocDir, "alloc", "logs"), 0o777},
		{filepath.Join(allocDir, "alloc", "tmp"), 0o777},
		{filepath.Join(allocDir, "alloc", "data"), 0o777},
		{p.TaskDir, 0o777},
		{filepath.Join(p.TaskDir, "local"), 0o777},
		{filepath.Join(p.TaskDir, "tmp"), 0o777 | os.ModeSticky},
		{filepath.Join(p.TaskDir, "secrets"), 0o777},
		{filepath.Join(p.TaskDir, "private"), 0o777},
	}
	uid, gid := nobody()
	for _, d := range dirs {
		if err := os.MkdirAll(d.path, 0o755); err != nil {
			return p, err
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return p, err
		}
		if uid >= 0 {
			if err := os.Chown(d.path, uid, gid); err != nil {
				return p, err
			}
		}
	}
	for _, fifo := range []string{p.StdoutFifo, p.StderrFifo} {
		if err := unix.Mkfifo(fifo, 0o600); err != nil && !errors.Is(err, unix.EEXIST) {
			return p, err
		}
	}
	return p, nil
}

// nobody is the owner Nomad gives task directories when it runs as root
// (-1 when it does not, or there is no such user).
func nobody() (int, int) {
	if os.Geteuid() != 0 {
		return -1, -1
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		return -1, -1
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return -1, -1
	}
	return uid, gid
}

// fifoReader copies a FIFO into a log file like Nomad's logmon: it opens
// the FIFO for reading, copies until the writer side closes (EOF), then
// reopens it, so a writer that reconnects (a restarted plugin) keeps
// working. The first open happens synchronously (non-blocking), so a
// reader exists before StartTask is sent.
type fifoReader struct {
	fifo, out string
	stopOnce  sync.Once
	stop      chan struct{}
	done      chan struct{}
	// state is what the test asked logmon to be: readerRunning, readerPaused
	// (open but reading nothing, a stuck collector) or readerClosed (gone:
	// the FIFO has no reader until it is set running again).
	state int32
}

const (
	readerRunning int32 = iota
	readerPaused
	readerClosed
)

func openFifoRead(path string) (int, error) {
	return unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
}

func startFifoReader(fifo, out string) (*fifoReader, error) {
	fd, err := openFifoRead(fifo)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	r := &fifoReader{fifo: fifo, out: out, stop: make(chan struct{}), done: make(chan struct{})}
	go r.loop(fd, f)
	return r, nil
}

func (r *fifoReader) loop(fd int, f *os.File) {
	defer close(r.done)
	defer f.Close()
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	buf := make([]byte, 64*1024)
	// drain copies whatever is buffered; returns true on EOF.
	drain := func() (eof bool) {
		for {
			n, err := unix.Read(fd, buf)
			if n > 0 {
				_, _ = f.Write(buf[:n])
				continue
			}
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				return false
			}
			return true // n == 0 (no writers) or a hard error
		}
	}
	for {
		select {
		case <-r.stop:
			if fd >= 0 {
				drain()
			}
			return
		default:
		}
		switch atomic.LoadInt32(&r.state) {
		case readerPaused:
			time.Sleep(20 * time.Millisecond)
			continue
		case readerClosed:
			if fd >= 0 {
				unix.Close(fd)
				fd = -1
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if fd < 0 {
			nfd, err := openFifoRead(r.fifo)
			if err != nil {
				return
			}
			fd = nfd
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if n == 0 {
			continue
		}
		if fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) == 0 {
			continue
		}
		if drain() {
			// The writer went away: reopen like logmon does.
			unix.Close(fd)
			fd = -1
			for fd < 0 {
				nfd, err := openFifoRead(r.fifo)
				if err == nil {
					fd = nfd
					break
				}
				if !errors.Is(err, syscall.EINTR) {
					// FIFO removed: nothing more to read.
					return
				}
			}
		}
	}
}

func (r *fifoReader) setState(state int32) {
	atomic.StoreInt32(&r.state, state)
}

func (r *fifoReader) Stop() {
	r.stopOnce.Do(func() { close(r.stop) })
	<-r.done
}
