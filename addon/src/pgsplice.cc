// Thin, generic libbpf binding for pgsplice. Policy lives in ebpf/ and src/kernel/.
#include <napi.h>
#include <uv.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <algorithm>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <deque>
#include <string>
#include <vector>

namespace {

std::string g_log;  // libbpf messages of the current load (verifier log on failure)

int LogPrint(enum libbpf_print_level level, const char* fmt, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  char buf[4096];
  int n = vsnprintf(buf, sizeof(buf), fmt, args);
  if (n > 0) g_log.append(buf, n < (int)sizeof(buf) ? n : (int)sizeof(buf) - 1);
  if (g_log.size() > (1 << 20)) g_log.erase(0, g_log.size() - (1 << 20));
  return 0;
}

std::string Errno(const std::string& what, int err) {
  if (err < 0) err = -err;
  return what + ": " + strerror(err) + " (errno " + std::to_string(err) + ")";
}

// Keep the end of the libbpf/verifier log: that is where the rejected instruction is.
std::string LogTail(size_t max = 3000) {
  if (g_log.size() <= max) return g_log;
  return "..." + g_log.substr(g_log.size() - max);
}

class Obj;

struct RingSub {
  Obj* owner = nullptr;
  struct ring_buffer* rb = nullptr;
  struct bpf_map* map = nullptr;
  uv_poll_t* poll = nullptr;
  Napi::FunctionReference cb;
  std::deque<std::vector<uint8_t>> pending;  // consumed, not yet delivered (in ring order)
  bool batch = false;  // deliver all pending records in one call (u32 length + bytes each)
  // batch mode: the records consumed and not yet delivered, as delivered (u32 length +
  // bytes each), in one buffer reused from batch to batch (no allocation per record)
  std::vector<uint8_t> batched;
  // > 0: a record's bytes end at trim_hdr + its u16 length field at trim_len_off (the
  // rest of a fixed-size reservation is not copied)
  uint32_t trim_hdr = 0;
  uint32_t trim_len_off = 0;
  // > 0: after a wake-up, records are consumed this many ms later, in one batch with
  // those that arrive meanwhile (the poll is stopped until then): one wake-up per batch
  // instead of one per record when the consumer keeps up.
  uint32_t delay_ms = 0;
  uv_timer_t* timer = nullptr;
  int open_handles = 0;  // poll and timer not closed yet: the last close frees this
};

static void CloseRingHandle(uv_handle_t* h) {
  RingSub* sub = static_cast<RingSub*>(h->data);
  if (h->type == UV_TIMER)
    delete reinterpret_cast<uv_timer_t*>(h);
  else
    delete reinterpret_cast<uv_poll_t*>(h);
  if (--sub->open_handles > 0) return;
  if (sub->rb) ring_buffer__free(sub->rb);
  delete sub;
}

class Obj : public Napi::ObjectWrap<Obj> {
 public:
  static Napi::FunctionReference* ctor;

  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "BpfObject",
                       {
                           InstanceMethod("attachSockmapVerdict", &Obj::AttachSockmapVerdict),
                           InstanceMethod("mapUpdate", &Obj::MapUpdate),
                           InstanceMethod("mapLookup", &Obj::MapLookup),
                           InstanceMethod("mapLookupPercpu", &Obj::MapLookupPercpu),
                           InstanceMethod("mapDelete", &Obj::MapDelete),
                           InstanceMethod("mapPush", &Obj::MapPush),
                           InstanceMethod("mapPop", &Obj::MapPop),
                           InstanceMethod("mapInfo", &Obj::MapInfo),
                           InstanceMethod("createInnerMap", &Obj::CreateInnerMap),
                           InstanceMethod("progTestRun", &Obj::ProgTestRun),
                           InstanceMethod("programFd", &Obj::ProgramFd),
                           InstanceMethod("runSyscall", &Obj::RunSyscall),
                           InstanceMethod("onEvents", &Obj::OnEvents),
                           InstanceMethod("drainEvents", &Obj::DrainEvents),
                           InstanceMethod("globalU64", &Obj::GlobalU64),
                           InstanceMethod("close", &Obj::Close),
                       });
  }

  explicit Obj(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Obj>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString())
      throw Napi::TypeError::New(env, "load(objPath: string)");
    std::string path = info[0].As<Napi::String>();
    g_log.clear();
    libbpf_set_print(LogPrint);
    obj_ = bpf_object__open_file(path.c_str(), nullptr);
    int err = libbpf_get_error(obj_);
    if (err) {
      obj_ = nullptr;
      throw Napi::Error::New(env, Errno("bpf_object__open_file(" + path + ")", err) + "\n" + LogTail());
    }
    // load(path, { mapSizes: { name: entries }, programs: [names] }): sizes set before the
    // maps are created; programs: the only programs loaded (default all). The verifier's
    // work is most of a load's cost, and a program that is never run need not be verified.
    if (info.Length() > 1 && info[1].IsObject()) {
      Napi::Object opts = info[1].As<Napi::Object>();
      if (opts.Has("programs") && opts.Get("programs").IsArray()) {
        Napi::Array want = opts.Get("programs").As<Napi::Array>();
        std::vector<std::string> names;
        std::string bad;
        for (uint32_t i = 0; i < want.Length(); i++) {
          if (!want.Get(i).IsString()) {
            bad = "load: programs must be program names";
            break;
          }
          names.push_back(want.Get(i).As<Napi::String>());
          if (!bpf_object__find_program_by_name(obj_, names.back().c_str())) {
            bad = "no program named " + names.back() + " in " + path;
            break;
          }
        }
        if (!bad.empty()) {
          bpf_object__close(obj_);
          obj_ = nullptr;
          throw Napi::Error::New(env, bad);
        }
        struct bpf_program* p;
        bpf_object__for_each_program(p, obj_) {
          bool keep = std::find(names.begin(), names.end(), bpf_program__name(p)) != names.end();
          bpf_program__set_autoload(p, keep);
        }
      }
      if (opts.Has("mapSizes") && opts.Get("mapSizes").IsObject()) {
        Napi::Object sizes = opts.Get("mapSizes").As<Napi::Object>();
        Napi::Array names = sizes.GetPropertyNames();
        for (uint32_t i = 0; i < names.Length(); i++) {
          std::string name = names.Get(i).As<Napi::String>();
          uint32_t n = sizes.Get(name).As<Napi::Number>().Uint32Value();
          struct bpf_map* m = bpf_object__find_map_by_name(obj_, name.c_str());
          int e = m ? bpf_map__set_max_entries(m, n) : -ENOENT;
          if (e) {
            bpf_object__close(obj_);
            obj_ = nullptr;
            throw Napi::Error::New(env, Errno("map size of " + name, -e));
          }
        }
      }
    }
    err = bpf_object__load(obj_);
    if (err) {
      std::string msg = Errno("bpf_object__load(" + path + ")", err) + "\n" + LogTail();
      bpf_object__close(obj_);
      obj_ = nullptr;
      throw Napi::Error::New(env, msg);
    }
  }

  ~Obj() override { Release(); }

 private:
  struct bpf_object* obj_ = nullptr;
  const uint8_t* bss_ = nullptr;  // our read-only mapping of the .bss map (globalU64), unmapped with obj_
  size_t bss_size_ = 0;
  std::vector<int> links_;
  std::vector<int> inner_fds_;
  std::vector<RingSub*> subs_;

  void Release() {
    for (RingSub* s : subs_) {
      s->owner = nullptr;
      s->cb.Reset();
      if (s->poll) {
        uv_poll_stop(s->poll);
        if (s->timer) {
          uv_timer_stop(s->timer);
          uv_close(reinterpret_cast<uv_handle_t*>(s->timer), CloseRingHandle);
        }
        uv_close(reinterpret_cast<uv_handle_t*>(s->poll), CloseRingHandle);
      } else {
        if (s->rb) ring_buffer__free(s->rb);
        delete s;
      }
    }
    subs_.clear();
    for (int fd : links_) close(fd);
    links_.clear();
    for (int fd : inner_fds_) close(fd);
    inner_fds_.clear();
    if (bss_) {
      size_t page = sysconf(_SC_PAGESIZE);
      munmap(const_cast<uint8_t*>(bss_), (bss_size_ + page - 1) / page * page);
    }
    bss_ = nullptr;
    bss_size_ = 0;
    if (obj_) bpf_object__close(obj_);
    obj_ = nullptr;
  }

  void Check(Napi::Env env) {
    if (!obj_) throw Napi::Error::New(env, "bpf object is closed");
  }

  struct bpf_map* Map(const Napi::CallbackInfo& info, size_t i) {
    Check(info.Env());
    if (info.Length() <= i || !info[i].IsString()) throw Napi::TypeError::New(info.Env(), "map name expected");
    std::string name = info[i].As<Napi::String>();
    struct bpf_map* m = bpf_object__find_map_by_name(obj_, name.c_str());
    if (!m) throw Napi::Error::New(info.Env(), "no map named " + name);
    return m;
  }

  struct bpf_program* Program(const Napi::CallbackInfo& info, size_t i) {
    Check(info.Env());
    if (info.Length() <= i || !info[i].IsString()) throw Napi::TypeError::New(info.Env(), "program name expected");
    std::string name = info[i].As<Napi::String>();
    struct bpf_program* p = bpf_object__find_program_by_name(obj_, name.c_str());
    if (!p) throw Napi::Error::New(info.Env(), "no program named " + name);
    if (bpf_program__fd(p) < 0) throw Napi::Error::New(info.Env(), "program " + name + " was not loaded (load's programs option)");
    return p;
  }

  static Napi::Buffer<uint8_t> Buf(const Napi::CallbackInfo& info, size_t i, size_t want, const char* what) {
    if (info.Length() <= i || !info[i].IsBuffer())
      throw Napi::TypeError::New(info.Env(), std::string(what) + ": Buffer expected");
    auto b = info[i].As<Napi::Buffer<uint8_t>>();
    if (want && b.Length() != want)
      throw Napi::RangeError::New(info.Env(), std::string(what) + ": expected " + std::to_string(want) +
                                                  " bytes, got " + std::to_string(b.Length()));
    return b;
  }

  // The outcome of a map call that returned rc (errno set by it): true if done, false if the
  // key or element is absent (ENOENT: the caller answers null or false), else thrown, naming
  // the operation and the map.
  static bool Done(Napi::Env env, int rc, const char* op, struct bpf_map* m) {
    if (rc == 0) return true;
    if (errno == ENOENT) return false;
    throw Napi::Error::New(env, Errno(std::string(op) + " " + bpf_map__name(m), errno));
  }

  // attachSockmapVerdict(progName, mapName): libbpf 1.1 has no attach helper for this.
  Napi::Value AttachSockmapVerdict(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct bpf_program* p = Program(info, 0);
    std::string pname = bpf_program__name(p);
    struct bpf_map* m = Map(info, 1);
    int fd = bpf_link_create(bpf_program__fd(p), bpf_map__fd(m), BPF_SK_SKB_VERDICT, nullptr);
    if (fd < 0) throw Napi::Error::New(env, Errno("bpf_link_create(" + pname + ", BPF_SK_SKB_VERDICT)", errno));
    links_.push_back(fd);
    return Napi::Number::New(env, fd);
  }

  Napi::Value MapUpdate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct bpf_map* m = Map(info, 0);
    auto k = Buf(info, 1, bpf_map__key_size(m), "key");
    auto v = Buf(info, 2, bpf_map__value_size(m), "value");
    uint64_t flags = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Int64Value() : 0;
    if (bpf_map_update_elem(bpf_map__fd(m), k.Data(), v.Data(), flags))
      throw Napi::Error::New(env, Errno(std::string("update ") + bpf_map__name(m), errno));
    return env.Undefined();
  }

  Napi::Value MapLookup(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct bpf_map* m = Map(info, 0);
    auto k = Buf(info, 1, bpf_map__key_size(m), "key");
    uint64_t flags = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int64Value() : 0;
    auto out = Napi::Buffer<uint8_t>::New(env, bpf_map__value_size(m));
    if (!Done(env, bpf_map_lookup_elem_flags(bpf_map__fd(m), k.Data(), out.Data(), flags), "lookup", m)) return env.Null();
    return out;
  }

  // Per-CPU maps: one Buffer per possible CPU.
  Napi::Value MapLookupPercpu(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct bpf_map* m = Map(info, 0);
    auto k = Buf(info, 1, bpf_map__key_size(m), "key");
    int ncpu = libbpf_num_possible_cpus();
    if (ncpu <= 0) throw Napi::Error::New(env, Errno("libbpf_num_possible_cpus", ncpu));
    size_t vs = (bpf_map__value_size(m) + 7) & ~7u;
    std::vector<uint8_t> raw(vs * ncpu);
    if (!Done(env, bpf_map_lookup_elem(bpf_map__fd(m), k.Data(), raw.data()), "lookup", m)) return env.Null();
    auto arr = Napi::Array::New(env, ncpu);
    for (int i = 0; i < ncpu; i++)
      arr.Set(i, Napi::Buffer<uint8_t>::Copy(env, raw.data() + i * vs, bpf_map__value_size(m)));
    return arr;
  }

  Napi::Value MapDelete(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct bpf_map* m = Map(info, 0);
    auto k = Buf(info, 1, bpf_map__key_size(m), "key");
    return Napi::Boolean::New(env, Done(env, bpf_map_delete_elem(bpf_map__fd(m), k.Data()), "delete", m));
  }

  Napi::Value MapPush(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct bpf_map* m = Map(info, 0);
    auto v = Buf(info, 1, bpf_map__value_size(m), "value");
    if (bpf_map_update_elem(bpf_map__fd(m), nullptr, v.Data(), 0))
      throw Napi::Error::New(env, Errno(std::string("push ") + bpf_map__name(m), errno));
    return env.Undefined();
  }

  Napi::Value MapPop(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct bpf_map* m = Map(info, 0);
    auto out = Napi::Buffer<uint8_t>::New(env, bpf_map__value_size(m));
    if (!Done(env, bpf_map_lookup_and_delete_elem(bpf_map__fd(m), nullptr, out.Data()), "pop", m)) return env.Null();
    return out;
  }

  Napi::Value MapInfo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct bpf_map* m = Map(info, 0);
    auto o = Napi::Object::New(env);
    o.Set("fd", bpf_map__fd(m));
    o.Set("type", (int)bpf_map__type(m));
    o.Set("keySize", bpf_map__key_size(m));
    o.Set("valueSize", bpf_map__value_size(m));
    o.Set("maxEntries", bpf_map__max_entries(m));
    return o;
  }

  // createInnerMap(outerName, key, type, keySize, valueSize, maxEntries): creates a map
  // and stores it at outer[key] (ARRAY_OF_MAPS). The object keeps the fd until close().
  Napi::Value CreateInnerMap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct bpf_map* outer = Map(info, 0);
    auto k = Buf(info, 1, bpf_map__key_size(outer), "key");
    int type = info[2].As<Napi::Number>().Int32Value();
    uint32_t ks = info[3].As<Napi::Number>().Uint32Value();
    uint32_t vs = info[4].As<Napi::Number>().Uint32Value();
    uint32_t max = info[5].As<Napi::Number>().Uint32Value();
    int fd = bpf_map_create((enum bpf_map_type)type, "pgs_inner", ks, vs, max, nullptr);
    if (fd < 0) throw Napi::Error::New(env, Errno("bpf_map_create", errno));
    uint32_t v = fd;
    if (bpf_map_update_elem(bpf_map__fd(outer), k.Data(), &v, 0)) {
      int e = errno;
      close(fd);
      throw Napi::Error::New(env, Errno(std::string("update ") + bpf_map__name(outer), e));
    }
    inner_fds_.push_back(fd);
    return Napi::Number::New(env, fd);
  }

  // programFd(progName) -> the fd of a BPF_PROG_TYPE_SYSCALL program, for runSyscall.
  Napi::Value ProgramFd(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct bpf_program* p = Program(info, 0);
    if (bpf_program__type(p) != BPF_PROG_TYPE_SYSCALL) throw Napi::Error::New(env, std::string(bpf_program__name(p)) + " is not a syscall program");
    return Napi::Number::New(env, bpf_program__fd(p));
  }

  // runSyscall(fd, ctx) -> retval: runs the syscall program of programFd() on ctx in place
  // (the kernel writes the context back into ctx_in). The control operations run several
  // times per request that waits for a server, on Node's one thread: no copies, no result
  // object (progTestRun's cost more than the system call itself).
  Napi::Value RunSyscall(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Check(env);
    if (info.Length() < 2 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "runSyscall: program fd expected");
    int fd = info[0].As<Napi::Number>().Int32Value();
    auto ctx = Buf(info, 1, 0, "runSyscall ctx");
    LIBBPF_OPTS(bpf_test_run_opts, o);
    o.ctx_in = ctx.Data();
    o.ctx_size_in = ctx.Length();
    if (bpf_prog_test_run_opts(fd, &o)) throw Napi::Error::New(env, Errno("BPF_PROG_TEST_RUN", errno));
    return Napi::Number::New(env, o.retval);
  }

  // progTestRun(progName, dataIn|null, ctxIn|null) -> {retval, dataOut, ctxOut, duration}
  // For BPF_PROG_TYPE_SYSCALL the kernel writes the context back into ctx_in.
  Napi::Value ProgTestRun(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct bpf_program* p = Program(info, 0);
    std::string pname = bpf_program__name(p);
    std::vector<uint8_t> din, dout, cin, cout;
    if (info.Length() > 1 && info[1].IsBuffer()) {
      auto b = info[1].As<Napi::Buffer<uint8_t>>();
      din.assign(b.Data(), b.Data() + b.Length());
      dout.resize(b.Length() + 512);
    }
    if (info.Length() > 2 && info[2].IsBuffer()) {
      auto b = info[2].As<Napi::Buffer<uint8_t>>();
      cin.assign(b.Data(), b.Data() + b.Length());
      cout.resize(b.Length());
    }
    bool syscall = bpf_program__type(p) == BPF_PROG_TYPE_SYSCALL;
    LIBBPF_OPTS(bpf_test_run_opts, o);
    if (!din.empty()) {
      o.data_in = din.data();
      o.data_size_in = din.size();
      o.data_out = dout.data();
      o.data_size_out = dout.size();
    }
    if (!cin.empty()) {
      o.ctx_in = cin.data();
      o.ctx_size_in = cin.size();
      if (!syscall) {
        o.ctx_out = cout.data();
        o.ctx_size_out = cout.size();
      }
    }
    if (bpf_prog_test_run_opts(bpf_program__fd(p), &o))
      throw Napi::Error::New(env, Errno("BPF_PROG_TEST_RUN(" + pname + ")", errno));
    auto r = Napi::Object::New(env);
    r.Set("retval", Napi::Number::New(env, o.retval));
    r.Set("duration", Napi::Number::New(env, o.duration));
    r.Set("dataOut", din.empty() ? env.Null()
                                 : (Napi::Value)Napi::Buffer<uint8_t>::Copy(env, dout.data(), o.data_size_out));
    if (cin.empty())
      r.Set("ctxOut", env.Null());
    else if (syscall)
      r.Set("ctxOut", Napi::Buffer<uint8_t>::Copy(env, cin.data(), cin.size()));
    else
      r.Set("ctxOut", Napi::Buffer<uint8_t>::Copy(env, cout.data(), o.ctx_size_out));
    return r;
  }

  static int OnRecord(void* ctx, void* data, size_t size) {
    RingSub* s = static_cast<RingSub*>(ctx);
    const uint8_t* p = static_cast<const uint8_t*>(data);
    if (s->trim_hdr && size >= s->trim_hdr && s->trim_len_off + 2 <= s->trim_hdr) {
      uint16_t len;
      memcpy(&len, p + s->trim_len_off, 2);
      if (s->trim_hdr + len < size) size = s->trim_hdr + len;
    }
    if (s->batch) {
      uint32_t n = size;
      size_t at = s->batched.size();
      s->batched.resize(at + 4 + n);
      memcpy(s->batched.data() + at, &n, 4);
      memcpy(s->batched.data() + at + 4, p, n);
      return 0;
    }
    s->pending.emplace_back(p, p + size);
    return 0;
  }

  static void OnPoll(uv_poll_t* h, int status, int events) {
    RingSub* s = static_cast<RingSub*>(h->data);
    if (!s->owner || !s->rb) return;
    if (s->timer) {
      uv_poll_stop(s->poll);
      uv_timer_start(s->timer, &Obj::OnDelay, s->delay_ms, 0);
      return;
    }
    Consume(s);
  }

  static void OnDelay(uv_timer_t* t) {
    RingSub* s = static_cast<RingSub*>(t->data);
    if (!s->owner || !s->rb) return;
    uv_poll_start(s->poll, UV_READABLE, &Obj::OnPoll);
    Consume(s);
  }

  static void Consume(RingSub* s) {
    ring_buffer__consume(s->rb);
    if ((s->pending.empty() && s->batched.empty()) || s->cb.IsEmpty()) {
      s->pending.clear();
      s->batched.clear();
      return;
    }
    Napi::Env env = s->cb.Env();
    Napi::HandleScope scope(env);
    Deliver(s, env, true);
  }

  // Delivers pending records one at a time from the front: a callback that drains the
  // same ring (drainEvents) continues the same queue, so records keep their ring order.
  static void Deliver(RingSub* s, Napi::Env env, bool make) {
    if (s->batch) {
      if (s->batched.empty()) return;
      auto buf = Napi::Buffer<uint8_t>::Copy(env, s->batched.data(), s->batched.size());
      s->batched.clear();
      if (!make) {
        s->cb.Call(env.Global(), {buf});
        return;
      }
      try {
        s->cb.MakeCallback(env.Global(), {buf});
      } catch (const Napi::Error& e) {
        napi_fatal_exception(env, e.Value());
      }
      return;
    }
    while (!s->pending.empty()) {
      if (!s->owner || s->cb.IsEmpty()) return;  // the callback closed the object
      std::vector<uint8_t> rec = std::move(s->pending.front());
      s->pending.pop_front();
      auto buf = Napi::Buffer<uint8_t>::Copy(env, rec.data(), rec.size());
      if (!make) {
        s->cb.Call(env.Global(), {buf});  // a throw propagates to the JS caller
        continue;
      }
      // MakeCallback: runs microtasks after the call, like any libuv-driven callback;
      // a throw becomes process 'uncaughtException' instead of vanishing.
      try {
        s->cb.MakeCallback(env.Global(), {buf});
      } catch (const Napi::Error& e) {
        napi_fatal_exception(env, e.Value());
        return;
      }
    }
  }

  // drainEvents(mapName): delivers the records already in that ring now, synchronously
  // (a caller that must see them before bytes that reached it another way).
  Napi::Value DrainEvents(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct bpf_map* m = Map(info, 0);
    for (RingSub* s : subs_) {
      if (s->map != m || !s->rb) continue;
      ring_buffer__consume(s->rb);
      Deliver(s, env, false);
    }
    return env.Undefined();
  }

  // globalU64(offset): the u64 at offset of the object's .bss (its global variables),
  // read through a mapping of the map (libbpf 1.1 maps the live map only for skeletons;
  // its own copy is the initial image): no system call. JavaScript never holds the
  // mapping itself, which goes with close().
  Napi::Value GlobalU64(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Check(env);
    if (!bss_) {
      struct bpf_map* m;
      bpf_object__for_each_map(m, obj_) {
        const char* n = bpf_map__name(m);
        size_t nl = strlen(n);
        if (bpf_map__is_internal(m) && nl >= 4 && strcmp(n + nl - 4, ".bss") == 0) {
          size_t size = bpf_map__value_size(m);
          size_t page = sysconf(_SC_PAGESIZE);
          void* p = mmap(nullptr, (size + page - 1) / page * page, PROT_READ, MAP_SHARED, bpf_map__fd(m), 0);
          if (p == MAP_FAILED) throw Napi::Error::New(env, Errno("mmap .bss", errno));
          bss_ = static_cast<const uint8_t*>(p);
          bss_size_ = size;
          break;
        }
      }
      if (!bss_) throw Napi::Error::New(env, "the object has no .bss");
    }
    if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "globalU64(offset: number)");
    uint32_t off = info[0].As<Napi::Number>().Uint32Value();
    if (off % 8 || off + 8 > bss_size_) throw Napi::RangeError::New(env, "globalU64: offset " + std::to_string(off) + " outside the .bss of " + std::to_string(bss_size_) + " bytes");
    uint64_t v = __atomic_load_n(reinterpret_cast<const uint64_t*>(bss_ + off), __ATOMIC_ACQUIRE);
    return Napi::Number::New(env, static_cast<double>(v));
  }

  // onEvents(mapName, cb): a RINGBUF consumer woken by libuv (no polling).
  Napi::Value OnEvents(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct bpf_map* m = Map(info, 0);
    if (info.Length() < 2 || !info[1].IsFunction()) throw Napi::TypeError::New(env, "callback expected");
    RingSub* s = new RingSub();
    s->owner = this;
    s->map = m;
    s->rb = ring_buffer__new(bpf_map__fd(m), &Obj::OnRecord, s, nullptr);
    if (!s->rb) {
      int e = errno;
      delete s;
      throw Napi::Error::New(env, Errno("ring_buffer__new", e));
    }
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    s->poll = new uv_poll_t();
    s->poll->data = s;
    int rc = uv_poll_init(loop, s->poll, ring_buffer__epoll_fd(s->rb));
    if (rc == 0) rc = uv_poll_start(s->poll, UV_READABLE, &Obj::OnPoll);
    if (rc) {
      ring_buffer__free(s->rb);
      delete s->poll;
      delete s;
      throw Napi::Error::New(env, std::string("uv_poll: ") + uv_strerror(rc));
    }
    // do not keep the process alive just for events
    uv_unref(reinterpret_cast<uv_handle_t*>(s->poll));
    s->cb = Napi::Persistent(info[1].As<Napi::Function>());
    // onEvents(map, cb, true): cb gets every record consumed at once, each as a
    // little-endian u32 length and its bytes (one call per wake-up, not per record)
    s->batch = info.Length() > 2 && info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
    s->open_handles = 1;
    subs_.push_back(s);
    // onEvents(map, cb, batch, delayMs, [hdrBytes, lenOffset]): records trimmed to their
    // header + the u16 length at lenOffset (see RingSub)
    if (info.Length() > 4 && info[4].IsArray()) {
      Napi::Array t = info[4].As<Napi::Array>();
      s->trim_hdr = t.Get(0u).As<Napi::Number>().Uint32Value();
      s->trim_len_off = t.Get(1u).As<Napi::Number>().Uint32Value();
    }
    // onEvents(map, cb, batch, delayMs): consume delayMs after a wake-up (see RingSub)
    if (info.Length() > 3 && info[3].IsNumber() && info[3].As<Napi::Number>().Uint32Value() > 0) {
      s->delay_ms = info[3].As<Napi::Number>().Uint32Value();
      s->timer = new uv_timer_t();
      s->timer->data = s;
      uv_timer_init(loop, s->timer);
      uv_unref(reinterpret_cast<uv_handle_t*>(s->timer));
      s->open_handles = 2;
    }
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Release();
    return info.Env().Undefined();
  }
};

Napi::FunctionReference* Obj::ctor = nullptr;

Napi::Value Load(const Napi::CallbackInfo& info) {
  if (info.Length() > 1) return Obj::ctor->New({info[0], info[1]});
  return Obj::ctor->New({info[0]});
}

// socketCookie(fd) -> bigint (SO_COOKIE), the key the verdict sees for a socket.
Napi::Value SocketCookie(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len))
    throw Napi::Error::New(env, Errno("getsockopt(SO_COOKIE)", errno));
  return Napi::BigInt::New(env, cookie);
}

// tcpBytesWritten(fd) -> bigint: bytes this TCP socket has taken from writers so far
// (peer-acked + still queued), the in-flight bound's baseline for user-space writes.
Napi::Value TcpBytesWritten(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  // glibc's struct tcp_info lacks tcpi_bytes_acked and clashes with linux/tcp.h:
  // read the kernel struct raw; the field sits at offset 120 (uapi, stable).
  uint8_t ti[256];
  socklen_t len = sizeof(ti);
  memset(ti, 0, sizeof(ti));
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &len))
    throw Napi::Error::New(env, Errno("getsockopt(TCP_INFO)", errno));
  if (len < 128) throw Napi::Error::New(env, "TCP_INFO too short for tcpi_bytes_acked");
  uint64_t acked;
  memcpy(&acked, ti + 120, sizeof(acked));
  int outq = 0;
  if (ioctl(fd, SIOCOUTQ, &outq)) throw Napi::Error::New(env, Errno("ioctl(SIOCOUTQ)", errno));
  return Napi::BigInt::New(env, acked + (uint64_t)outq);
}

// listenReusePort(host, port, backlog) -> fd: a listening TCP socket with SO_REUSEPORT
// (Node 20's net has no reusePort option). Several pgsplice processes (workers, or an old
// and a new generation during a takeover) bind the same port; the kernel spreads new
// connections over them. The fd is handed to net.Server.listen({ fd }).
Napi::Value ListenReusePort(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string host = info[0].As<Napi::String>().Utf8Value();
  int port = info[1].As<Napi::Number>().Int32Value();
  int backlog = info[2].As<Napi::Number>().Int32Value();
  struct addrinfo hints, *res = nullptr;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  std::string service = std::to_string(port);
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc) throw Napi::Error::New(env, std::string("getaddrinfo(") + host + "): " + gai_strerror(rc));
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    freeaddrinfo(res);
    throw Napi::Error::New(env, Errno("socket", errno));
  }
  int one = 1;
  const char* step = nullptr;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one))) step = "setsockopt(SO_REUSEADDR)";
  else if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one))) step = "setsockopt(SO_REUSEPORT)";
  else if (bind(fd, res->ai_addr, res->ai_addrlen)) step = "bind";
  else if (listen(fd, backlog)) step = "listen";
  int err = errno;
  freeaddrinfo(res);
  if (step) {
    close(fd);
    throw Napi::Error::New(env, Errno(step, err));
  }
  return Napi::Number::New(env, fd);
}

// tcpOption(fd, name[, value]) -> number: sets (with value) and reads back one of the TCP
// options PgBouncer sets that Node's net cannot: "keepcnt" (TCP_KEEPCNT), "keepintvl"
// (TCP_KEEPINTVL, s), "user_timeout" (TCP_USER_TIMEOUT, ms). Nothing else.
Napi::Value TcpOption(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  std::string name = info[1].As<Napi::String>().Utf8Value();
  int opt;
  if (name == "keepcnt") opt = TCP_KEEPCNT;
  else if (name == "keepintvl") opt = TCP_KEEPINTVL;
  else if (name == "user_timeout") opt = TCP_USER_TIMEOUT;
  else throw Napi::Error::New(env, "tcpOption: unknown option " + name);
  if (info.Length() > 2 && !info[2].IsUndefined()) {
    int v = info[2].As<Napi::Number>().Int32Value();
    if (setsockopt(fd, IPPROTO_TCP, opt, &v, sizeof(v)))
      throw Napi::Error::New(env, Errno("setsockopt(TCP " + name + ")", errno));
  }
  int got = 0;
  socklen_t len = sizeof(got);
  if (getsockopt(fd, IPPROTO_TCP, opt, &got, &len))
    throw Napi::Error::New(env, Errno("getsockopt(TCP " + name + ")", errno));
  return Napi::Number::New(env, got);
}

// sendDatagram(path, buffer) -> 0 or an errno: sends one datagram to the unix datagram
// socket at path (syslog's /dev/log; Node has no unix datagram sockets). Never blocks
// (a full receiver drops the line, as a logger must not stall the proxy) and never throws:
// the caller decides what a failure is worth. One unbound socket is kept for all sends.
Napi::Value SendDatagram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  static int fd = -1;
  std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Buffer<uint8_t> buf = info[1].As<Napi::Buffer<uint8_t>>();
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof(sa.sun_path)) return Napi::Number::New(env, ENAMETOOLONG);
  memcpy(sa.sun_path, path.data(), path.size());
  if (fd < 0) fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Napi::Number::New(env, errno);
  ssize_t n = sendto(fd, buf.Data(), buf.Length(), MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr*)&sa, sizeof(sa));
  return Napi::Number::New(env, n < 0 ? errno : 0);
}

Napi::Value LibbpfVersion(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), libbpf_version_string());
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  Napi::Function f = Obj::Init(env);
  Obj::ctor = new Napi::FunctionReference(Napi::Persistent(f));
  exports.Set("BpfObject", f);
  exports.Set("load", Napi::Function::New(env, Load));
  exports.Set("socketCookie", Napi::Function::New(env, SocketCookie));
  exports.Set("tcpBytesWritten", Napi::Function::New(env, TcpBytesWritten));
  exports.Set("libbpfVersion", Napi::Function::New(env, LibbpfVersion));
  exports.Set("listenReusePort", Napi::Function::New(env, ListenReusePort));
  exports.Set("tcpOption", Napi::Function::New(env, TcpOption));
  exports.Set("sendDatagram", Napi::Function::New(env, SendDatagram));
  return exports;
}

}  // namespace

NODE_API_MODULE(pgsplice, Init)
