// Lab 2: traffic light controller for a crossing of a main road and a side
// road. The main road shows green until a car waits on the side road (car)
// and the main green has lasted at least GREEN_MIN ticks; then main goes
// yellow for YELLOW ticks, the side road gets green for GREEN_SIDE ticks and
// yellow for YELLOW ticks, and control returns to the main road. Lights are
// one-hot {red, yellow, green} per road. tick is a slow enable (e.g. 1 Hz).
module traffic_light (clk, rst, tick, car, main_light, side_light);
  parameter GREEN_MIN  = 10;
  parameter GREEN_SIDE = 5;
  parameter YELLOW     = 2;

  input        clk, rst, tick, car;
  output [2:0] main_light;
  output [2:0] side_light;
  reg    [2:0] main_light, side_light;

  localparam MAIN_G = 2'd0, MAIN_Y = 2'd1, SIDE_G = 2'd2, SIDE_Y = 2'd3;

  reg [1:0] state;
  reg [4:0] timer;

  always @(posedge clk)
    if (rst) begin
      state <= MAIN_G;
      timer <= 0;
    end else if (tick) begin
      timer <= timer + 1;
      case (state)
        MAIN_G: if (car && timer >= GREEN_MIN - 1) begin state <= MAIN_Y; timer <= 0; end
        MAIN_Y: if (timer == YELLOW - 1)           begin state <= SIDE_G; timer <= 0; end
        SIDE_G: if (timer == GREEN_SIDE - 1)       begin state <= SIDE_Y; timer <= 0; end
        SIDE_Y: if (timer == YELLOW - 1)           begin state <= MAIN_G; timer <= 0; end
      endcase
    end

  always @(state)
    case (state)
      MAIN_G:  begin main_light = 3'b001; side_light = 3'b100; end
      MAIN_Y:  begin main_light = 3'b010; side_light = 3'b100; end
      SIDE_G:  begin main_light = 3'b100; side_light = 3'b001; end
      default: begin main_light = 3'b100; side_light = 3'b010; end
    endcase
endmodule
